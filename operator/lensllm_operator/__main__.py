"""`python -m lensllm_operator`: the same as `lensllm operator`."""

import sys

from lensllm.cli.main import main

sys.exit(main(["operator", *sys.argv[1:]]))
