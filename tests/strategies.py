"""Hypothesis strategies shared by the test modules."""

from __future__ import annotations

from hypothesis import strategies as st

from goop.message import MAX_CONTENT_BYTES, MAX_EMAIL_BYTES, PresenceMessage

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars
    | st.fixed_dictionaries(
        {
            "type": st.sampled_from(["online", "update", "offline", "x"]),
            "peerId": st.text(max_size=5),
        },
        optional={
            "content": json_scalars,
            "email": json_scalars,
            "avatarHash": json_scalars,
            "ts": json_scalars,
            "PEERID": json_scalars,
            "addrs": json_scalars | st.lists(json_scalars, max_size=3),
            "verified": json_scalars,
            "videoDisabled": json_scalars,
            "publicKey": json_scalars,
            "target": json_scalars,
            "unknownKey": json_scalars,
        },
    ),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)

# Text that survives UTF-8 (no lone surrogates), as the validator requires.
utf8_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)))

peer_ids = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60
).filter(lambda s: s.strip() != "")
short_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)
addrs = st.lists(
    st.text(alphabet="/ip4tcu0123456789.", min_size=1, max_size=40), max_size=4
).map(tuple)


@st.composite
def presence_messages(
    draw: st.DrawFn, peer_ids: st.SearchStrategy[str] = peer_ids
) -> PresenceMessage:
    content = draw(utf8_text.filter(lambda s: len(s.encode()) <= MAX_CONTENT_BYTES))
    email = draw(utf8_text.filter(lambda s: len(s.encode()) <= MAX_EMAIL_BYTES))
    return PresenceMessage(
        type=draw(st.sampled_from(["online", "update", "offline"])),
        peer_id=draw(peer_ids),
        content=content,
        email=email,
        avatar_hash=draw(st.text(alphabet="0123456789abcdef", max_size=64)),
        ts=draw(st.integers(min_value=1, max_value=2**63 - 1)),
        video_disabled=draw(st.booleans()),
        active_template=draw(short_text),
        addrs=draw(addrs),
        public_key=draw(short_text),
        encryption_supported=draw(st.booleans()),
        goop_client_version=draw(short_text),
    )
