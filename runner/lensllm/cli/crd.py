"""`lensllm crd`: print the LLMSelection CustomResourceDefinition generated from the models."""

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("crd", help="print the LLMSelection CRD (YAML) generated from the spec models")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from lensllm.selection.crd import crd_yaml

    sys.stdout.write(crd_yaml())
    return 0
