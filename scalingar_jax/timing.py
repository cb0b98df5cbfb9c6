"""Compile time apart from run time: `Clock`, a block's wall clock minus the JAX compiles inside it.

    with Clock(on_compile=lambda: print("compiling ...")) as c:
        generate(...)
    c.wall, c.compile, c.seconds      # seconds: wall - compile, at least 0
"""
from __future__ import annotations

import time

__all__ = ["Clock"]


class Clock:
    """Context manager: the wall clock of a block minus the JAX compile time spent inside it. While
    the block runs, a listener of its own (registered on entry, removed on exit) adds up JAX's compile
    events. After the block: `wall`, `compile` and `seconds` = max(0, wall - compile), in seconds.
    on_compile(): called once, at the block's first compile event (the first function traced,
    before XLA compiles it)."""

    def __init__(self, on_compile=None):
        self.on_compile = on_compile

    def __enter__(self):
        import jax

        self.compile, told = 0.0, [self.on_compile is None]

        def on_event(name, secs, **_):
            if name.startswith("/jax/core/compile/"):
                if not told[0]:
                    told[0] = True
                    self.on_compile()
                self.compile += secs

        self._listener = on_event
        jax.monitoring.register_event_duration_secs_listener(on_event)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        import jax

        self.wall = time.perf_counter() - self.t0
        jax.monitoring.unregister_event_duration_listener(self._listener)
        self.seconds = max(0.0, self.wall - self.compile)
        return False
