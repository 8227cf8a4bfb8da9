"""``specprune submit MODEL --data DATA``: send a job to the service; with ``--wait`` follow it, print the
before/after table and (with ``-o``) download the model. Without ``--wait`` the job id is printed."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from app.cli.config_options import add_config_options, config_from_args
from app.cli.failures import CommandError, guarded
from app.cli.remote import add_server_options, client_from_args, info, translate_error
from app.cli.summary import summary_table


def register(subcommands: Any) -> None:
    parser = subcommands.add_parser(
        "submit",
        help="submit a compression job to the service",
        description="Upload MODEL and its data to the service. Prints the job id; with --wait, follows "
        "the job and prints the before/after table; with -o, also downloads the model.",
    )
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="a torch.export .pt2, an ONNX (sent zipped with its NAME.onnx.data when that lies beside it) "
        "or a TorchScript file",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--data", metavar="DATA", help="a data file to upload (.npz, .safetensors, image archive)"
    )
    source.add_argument("--dataset-id", metavar="ID", help="a dataset already stored on the service")
    source.add_argument(
        "--dataset-uri", metavar="URI", help="an s3://, file:// or https:// dataset the service allows"
    )
    parser.add_argument(
        "--eval-fraction", type=float, metavar="F", help="hold out this fraction for evaluation"
    )
    parser.add_argument("--preprocess", metavar="JSON", help="image preprocessing for image archives")
    parser.add_argument(
        "--output-format", choices=("same", "pt2", "onnx", "torchscript"), help="format of the result"
    )
    parser.add_argument("--callback-url", metavar="URL", help="POST the job here (signed) when it ends")
    add_config_options(parser)
    parser.add_argument("--wait", action="store_true", help="follow the job until it ends")
    parser.add_argument("-o", "--output", metavar="OUT", help="download the model here (implies --wait)")
    parser.add_argument("--report", metavar="REPORT.json", help="save core's report here (implies --wait)")
    parser.add_argument("--timeout", type=float, metavar="SECONDS", help="give up waiting after this long")
    add_server_options(parser)
    parser.set_defaults(func=guarded("submit", run, translate_error))


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.output_format:
        config["output_format"] = args.output_format
    preprocess = _json_object(args.preprocess, "--preprocess") if args.preprocess else None
    for path in (args.model, args.data):
        if path is not None and not Path(path).is_file():
            raise CommandError(f"{path}: no such file")
    with client_from_args(args) as client:
        job = client.submit(
            args.model,
            dataset=args.data,
            dataset_id=args.dataset_id,
            dataset_uri=args.dataset_uri,
            config=config or None,
            callback_url=args.callback_url,
            eval_fraction=args.eval_fraction,
            preprocess=preprocess,
        )
        if not (args.wait or args.output or args.report):
            print(job.id)
            return 0
        info(f"job {job.id} submitted to {client.url}")
        job.wait(progress=True, timeout=args.timeout)
        report = job.report()
        if args.output:
            written = job.download(args.output)
            info(f"wrote {written}")
        if args.report:
            Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
        print(summary_table(report))
        info(f"job {job.id} succeeded")
    return 0


def _json_object(text: str, option: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(f"{option} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise CommandError(f"{option} must be a JSON object")
    return value
