"""``ragserve keys``: create, list and revoke API keys in a keys file (``auth.keys_file``).

The file holds hashes only: ``create`` prints the new key once, to give to its user. A running
server picks every change up within ``auth.reload_interval_s`` (no restart). In Kubernetes the
same file is the ``keys.yaml`` of the ``ragserve-api-keys`` Secret (k8s/README.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import yaml

from deployments.ingress.auth import SCOPES, KeyEntry, KeysFile, Limits, hash_key, new_key

HEADER = "# ragserve API keys (`ragserve keys`): only SHA-256 hashes of the keys are stored here.\n"


def read(path: Path) -> KeysFile:
    return KeysFile.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.exists() \
        else KeysFile()


def write(path: Path, keys: KeysFile) -> None:
    """Replace the file atomically (a reader never sees half of it), readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = keys.model_dump(mode="json", exclude_none=True, exclude_defaults=False)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(HEADER + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def cmd_create(args: argparse.Namespace) -> int:
    keys = read(args.file)
    key, key_id = new_key()
    limits = Limits(requests_per_s=args.rps, burst=args.burst, tokens_per_min=args.tokens_per_min,
                    concurrent_generations=args.concurrent)
    entry = KeyEntry(id=key_id, hash=hash_key(key), tenant=args.tenant, scopes=tuple(args.scopes),
                     groups=tuple(args.groups), limits=limits if limits != Limits() else None)
    keys.keys.append(entry)
    write(args.file, keys)
    print(key)
    print(f"key {key_id} for tenant {args.tenant} ({', '.join(entry.scopes)}) added to {args.file}; "
          "this is the only time the key is shown", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    for k in read(args.file).keys:
        state = "disabled" if k.disabled else "active"
        print(f"{k.id}  {k.tenant:12}  {','.join(k.scopes):18}  groups={','.join(k.groups) or '-'}  {state}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    keys = read(args.file)
    if not any(k.id == args.key_id for k in keys.keys):
        print(f"no key {args.key_id} in {args.file}", file=sys.stderr)
        return 1
    keys.keys = [k.model_copy(update={"disabled": True}) if k.id == args.key_id else k for k in keys.keys]
    write(args.file, keys)
    print(f"key {args.key_id} revoked", file=sys.stderr)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``ragserve keys``."""
    s = sub.add_parser("keys", help="create, list or revoke API keys")
    ks = s.add_subparsers(dest="keys_cmd", required=True)
    c = ks.add_parser("create", help="add a key and print it (once)")
    c.add_argument("--tenant", required=True, help="tenant id: lowercase letters and digits")
    c.add_argument("--scopes", type=lambda v: [x for x in v.split(",") if x], default=["query"],
                   help=f"comma-separated, of {','.join(SCOPES)} (default query)")
    c.add_argument("--groups", type=lambda v: [x for x in v.split(",") if x], default=[],
                   help="document groups the key may read besides public documents")
    c.add_argument("--rps", type=float, help="requests per second")
    c.add_argument("--burst", type=int, help="requests at once above the rate")
    c.add_argument("--tokens-per-min", type=int, help="generated tokens per minute")
    c.add_argument("--concurrent", type=int, help="generations at once")
    c.set_defaults(fn=cmd_create)
    ls = ks.add_parser("list", help="the keys (ids, tenants, scopes; never the keys)")
    ls.set_defaults(fn=cmd_list)
    r = ks.add_parser("revoke", help="disable a key (takes effect within auth.reload_interval_s)")
    r.add_argument("key_id")
    r.set_defaults(fn=cmd_revoke)
    for p in (c, ls, r):
        p.add_argument("--file", type=Path, required=True, help="the keys file (auth.keys_file)")
