"""``specprune datasets upload|list|delete``: datasets stored on the service."""

from __future__ import annotations

import argparse
import json
from typing import Any

from app.cli.failures import guarded
from app.cli.remote import add_server_options, client_from_args, info, translate_error


def register(subcommands: Any) -> None:
    parser = subcommands.add_parser("datasets", help="upload, list or delete datasets on the service")
    actions = parser.add_subparsers(dest="datasets_command", required=True, metavar="ACTION")

    upload = actions.add_parser("upload", help="store a dataset file or reference; prints its description")
    upload.add_argument(
        "source",
        metavar="PATH_OR_URI",
        help="a .npz/.safetensors/image-folder archive, or s3:// file:// http(s)://",
    )
    upload.add_argument(
        "--preprocess", metavar="JSON", help="image preprocessing (resize, center_crop, mean, std, ...)"
    )
    upload.set_defaults(func=guarded("datasets upload", run_upload, translate_error))

    listing = actions.add_parser("list", help="stored datasets, newest first")
    listing.add_argument("--json", action="store_true", help="one dataset object per line")
    listing.set_defaults(func=guarded("datasets list", run_list, translate_error))

    delete = actions.add_parser("delete", help="delete a stored dataset")
    delete.add_argument("dataset_id", metavar="DATASET")
    delete.set_defaults(func=guarded("datasets delete", run_delete, translate_error))
    for action in (upload, listing, delete):
        add_server_options(action)


def run_upload(args: argparse.Namespace) -> int:
    preprocess = json.loads(args.preprocess) if args.preprocess else None
    is_uri = "://" in args.source
    with client_from_args(args) as client:
        dataset = client.upload_dataset(
            None if is_uri else args.source, uri=args.source if is_uri else None, preprocess=preprocess
        )
    print(json.dumps(dataset, indent=2))
    return 0


def run_list(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        datasets = client.datasets()
    if args.json:
        for dataset in datasets:
            print(json.dumps(dataset))
        return 0
    for d in datasets:
        print(
            f"{d['id']}  {d['format']:<12} {d['samples']:>8} samples  {'x'.join(map(str, d['input_shape']))}"
        )
    return 0


def run_delete(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        client.delete_dataset(args.dataset_id)
    info(f"dataset {args.dataset_id}: deleted")
    return 0
