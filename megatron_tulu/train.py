"""``python -m megatron_tulu.train``: see :mod:`megatron_tulu.training.cli`."""

from megatron_tulu.training.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
