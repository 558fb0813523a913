"""Small programs several fuzz tests run (one definition each, so the tests stay about what they check)."""

from __future__ import annotations

from tripwire.fuzz import prims


def abba_deadlock(mod):
    """A target body: two threads take locks A and B in opposite orders (a wait-for cycle once both hold one).

    `mod` is a module whose `threading` the body instruments, so its locks are the scheduler's."""
    async def body(ctx):
        ctx.instrument(mod)
        a, b = mod.threading.Lock(), mod.threading.Lock()

        def one():
            with a:
                prims.point()
                with b:
                    pass

        def two():
            with b:
                prims.point()
                with a:
                    pass
        ctx.spawn(one, name="one")
        ctx.spawn(two, name="two")
        await ctx.quiescent()

    return body
