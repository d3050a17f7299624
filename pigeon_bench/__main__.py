"""``python -m pigeon_bench ...`` (also under torchrun): the pigeon-bench command line."""

from pigeon_bench.cli import main

main()
