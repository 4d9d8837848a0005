"""What the fast tier may not start (tests/conftest.py holds the guard; tests/test_tiers.py
tests this): a module of its own, since every conftest.py is imported as `conftest`."""

from __future__ import annotations

# what makes a test slow by definition: a process that measures (the worker, torchrun ranks, a
# `hubbench run` that starts them) or a submitit job. The fast tier (`pytest -m "not slow"`)
# starts none of them.
MEASURING_MODULES = ("hubbench.measure", "torch.distributed", "submitit")


def starts_a_measuring_process(args: object) -> bool:
    argv = [str(a) for a in args] if isinstance(args, (list, tuple)) else str(args).split()
    modules = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-m"]
    program = argv[0].rsplit("/", 1)[-1] if argv else ""
    if program == "torchrun":
        return True
    cli = "hubbench" in modules or program == "hubbench"
    if cli and "run" in argv and "--dry-run" not in argv:
        return True
    return any(m == p or m.startswith(p + ".") for m in modules for p in MEASURING_MODULES)
