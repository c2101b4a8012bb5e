"""`python -m engine methods`: list the registered label-noise methods and their hyper-parameters."""

from __future__ import annotations

import dataclasses

HELP = "list the label-noise methods and their hyper-parameters (defaults from the papers)"


def add_parser(p) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args) -> int:
    import json

    from engine.methods import get_method, list_methods

    rows = []
    for name in list_methods():
        cls = get_method(name)
        params = [
            {"name": f.name, "default": f.default, "help": f.metadata.get("help", ""),
             **({"choices": list(f.metadata["choices"])} if f.metadata.get("choices") else {})}
            for f in dataclasses.fields(cls.config_cls)
        ]
        rows.append({"name": name, "summary": cls.summary, "params": params})
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        for r in rows:
            print(f"{r['name']:14s} {r['summary']}")
            for prm in r["params"]:
                choices = f" {{{','.join(prm['choices'])}}}" if prm.get("choices") else ""
                print(f"    --{r['name']}-{prm['name'].replace('_', '-')}{choices} [{prm['default']}]  {prm['help']}")
    return 0
