"""`lensllm operator`: run the LLMSelection operator (needs the `operator` extra)."""

import argparse

from lensllm.errors import LensLLMError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "operator",
        help="run the Kubernetes operator for LLMSelection resources",
        description="Watch LLMSelection resources and run their trials as Jobs. Settings default to the "
        "LENSLLM_* environment variables the Helm chart sets.",
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", dest="namespaces", metavar="NS", help="watch NS (repeatable)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (the default)")
    p.add_argument("--metrics-port", type=int, help="port of /metrics (default 8000)")
    p.add_argument("--liveness-port", type=int, help="port of /healthz (default 8080)")
    p.add_argument("--runner-image", help="default runner image for selections that name none")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        from lensllm_operator.config import OperatorConfig
        from lensllm_operator.run import run_operator, with_overrides
    except ImportError as err:
        raise LensLLMError(f"the operator needs the 'operator' extra: pip install 'lensllm[operator]' ({err.name})") from None
    config = with_overrides(
        OperatorConfig.from_env(),
        namespaces=() if args.all_namespaces else (tuple(args.namespaces) if args.namespaces else None),
        metrics_port=args.metrics_port,
        liveness_port=args.liveness_port,
        runner_image=args.runner_image,
    )
    run_operator(config)
    return 0
