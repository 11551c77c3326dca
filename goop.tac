# twistd -ny goop.tac — the same service tree as `twistd -n goop`, with the
# config read from $GOOP_CONFIG (default ./goop.json). supervisord runs this.
from twisted.application.service import Application

from goop.tap import tac_service

application = Application("goop")
tac_service().setServiceParent(application)
