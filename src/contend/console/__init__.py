"""An operations console: see and act on a runtime's zombies in a browser.

``make_console(rt, token=...)`` is an ASGI 3 app (mount it next to your routes, or serve it
with ``contend serve``): an overview (zombies over the last hour by strategy, removals by
reason, rejections and OCC conflicts per minute, health, hottest targets), a zombie browser
(filters, paging, one record's story) and, with a token, actions (remove, purge a target, sweep
now), each confirmed first. See docs/console.md.
"""

from contend.console.app import Console, make_console
from contend.console.query import PagedZombies, ZombieFilter
from contend.console.settings import ConsoleSettings

__all__ = ["Console", "ConsoleSettings", "PagedZombies", "ZombieFilter", "make_console"]
