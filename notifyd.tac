# Run notifyd from a tac file:  twistd -ny notifyd.tac
#
# Settings come from the environment (NOTIFYD_*) and, if NOTIFYD_CONFIG names
# one, a TOML config file -- the same keys as `twistd notifyd --help` lists.
from twisted.application import service

from notifyd import config
from notifyd.tap import make_service

application = service.Application("notifyd")
make_service(config.load()).setServiceParent(application)
