"""`studio`: generate, list, show, cancel, delete and watch generations, and list the models, from a terminal.

Exit codes: 0 done (for `generate`: the image succeeded and is saved), 1 the generation failed or was canceled
(Skytells' message on stderr), 2 the API refused (its error as a sentence), 130 interrupted (Ctrl-C stops
waiting, never the generation, and prints its id). With `--json` only JSON goes to stdout: the API's objects.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from common.predictions import TERMINAL, Status
from studio_cli.client import Api, Refused, extension_of

OK, FAILED, REFUSED, INTERRUPTED = 0, 1, 2, 130

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class State:
    """What Ctrl-C needs to say: the generation being waited for."""

    generation_id: str | None = None


def _json(value: Any) -> None:
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


def _line(generation: dict[str, Any]) -> str:
    prompt = generation["prompt"] if len(generation["prompt"]) <= 48 else generation["prompt"][:47] + "…"
    return f"{generation['id']}  {generation['status']:<10}  {prompt}"


def input_option(raw: str) -> tuple[str, Any]:
    """`NAME=VALUE` of `--input`: the value as JSON when it is JSON (`512`, `true`, `"7"`), else as text."""
    name, sep, value = raw.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{raw!r} is not NAME=VALUE")
    try:
        return name.strip(), json.loads(value)
    except ValueError:
        return name.strip(), value


def _takes_image(spec: Any) -> bool:
    """A string the model reads as a URL: where a reference image goes (the page offers a file there too)."""
    return isinstance(spec, dict) and spec.get("type") == "string" and spec.get("format") in ("uri", "uri-reference")


async def _image_field(api: Api, model: str | None) -> str:
    """The input the model reads its reference image from, as its schema says."""
    listed = (await api.call("GET", "/api/models"))["items"]
    chosen = next((item for item in listed if item["id"] == model or (model is None and item["default"])), None)
    if chosen is None:
        raise Refused(f"The API offers no model {model!r}: see `studio models`.")
    properties = chosen["inputSchema"].get("properties") or {}
    for name, spec in properties.items():
        if _takes_image(spec):
            return str(name)
    raise Refused(f"The model {chosen['id']} takes no reference image: see `studio models`.")


async def generate(api: Api, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"prompt": args.prompt} | ({"model": args.model} if args.model else {})
    if args.webhook:
        body["webhook"] = args.webhook
    model_input = dict(args.input or ())
    if args.image is not None:
        field = await _image_field(api, args.model)
        try:
            data = args.image.read_bytes()
        except OSError as exc:
            raise Refused(f"Could not read {args.image}: {exc.strerror or exc}.") from None
        model_input[field] = (await api.call("POST", "/api/uploads", content=data))["ref"]
    if model_input:
        body["input"] = model_input
    created = await api.call("POST", "/api/generate", json=body)
    State.generation_id = created["id"]
    if args.no_wait:
        _json(created) if args.json else out.print(f"{created['id']}  {created['status']}")
        return OK
    err.print(f"generation {created['id']} created", style="dim")
    started = time.monotonic()
    final = created

    async def follow() -> None:
        nonlocal final
        async for generation in api.events(f"/api/predictions/{created['id']}/events"):
            final = generation
        if final["status"] not in TERMINAL:  # the stream ended early: ask once
            final = await api.call("GET", f"/api/predictions/{created['id']}")

    following = asyncio.create_task(follow())
    with err.status(f"{created['status']}  0.0s") as status:
        while not following.done():  # the line ticks between events too
            await asyncio.wait({following}, timeout=0.2)
            status.update(f"{final['status']}  {time.monotonic() - started:.1f}s")
    await following  # its refusal, if any
    elapsed = time.monotonic() - started
    if final["status"] != Status.SUCCEEDED:
        if args.json:
            _json(final)
        err.print(f"{final['status']} after {elapsed:.1f}s: {final.get('error') or 'no reason given'}")
        return FAILED
    saved = []
    for index, url in enumerate(final["outputUrls"] or [final["outputUrl"]]):
        target = args.output or Path(f"{final['id']}.{extension_of(url)}")
        if index:
            target = target.with_name(f"{target.stem}-{index}{target.suffix}")
        saved.append(await api.save(url, target))
    if args.json:
        _json(final)
    else:
        out.print(f"succeeded in {elapsed:.1f}s: saved {', '.join(str(p) for p in saved)}")
    return OK


async def list_(api: Api, args: argparse.Namespace) -> int:
    page = await api.call("GET", "/api/generations", params={"limit": args.limit})
    if args.json:
        _json(page)
        return OK
    table = Table()
    table.add_column("id", no_wrap=True, min_width=36)  # whole, so it can be copied into `studio show`
    table.add_column("status", no_wrap=True)
    for name in ("model", "created", "prompt"):
        table.add_column(name)
    for item in page["items"]:
        table.add_row(item["id"], item["status"], item["model"], item["createdAt"][:19], item["prompt"][:48])
    out.print(table)
    if page["nextCursor"]:
        out.print(f"(more: there are older generations than these {len(page['items'])})", style="dim")
    return OK


async def show(api: Api, args: argparse.Namespace) -> int:
    generation = await api.call("GET", f"/api/predictions/{args.id}")
    if args.json:
        _json(generation)
    else:
        for key, value in generation.items():
            out.print(f"{key:>12}  {value if value is not None else '-'}")
    return OK


def _describe(spec: dict[str, Any]) -> str:
    """One option of a model's schema in a few words: its type, range or choices, and default."""
    if _takes_image(spec):
        words = ["reference image (--image FILE)"]
    elif "enum" in spec:
        words = ["one of " + ", ".join(str(value) for value in spec["enum"])]
    else:
        words = [str(spec.get("type", "any"))]
        if "minimum" in spec or "maximum" in spec:
            words.append(f"{spec.get('minimum', '')}..{spec.get('maximum', '')}")
        if "multipleOf" in spec:
            words.append(f"multiple of {spec['multipleOf']}")
        if "maxLength" in spec:
            words.append(f"at most {spec['maxLength']} characters")
    if "default" in spec:
        words.append(f"default {spec['default']}")
    return ", ".join(words)


async def models(api: Api, args: argparse.Namespace) -> int:
    listed = await api.call("GET", "/api/models")
    if args.json:
        _json(listed)
        return OK
    for item in listed["items"]:
        out.print(f"{item['id']}{'  (default)' if item['default'] else ''}", style="bold")
        properties = item["inputSchema"].get("properties") or {}
        for name, spec in properties.items():
            if name != "prompt" and isinstance(spec, dict):
                out.print(f"  --input {name}=…  {_describe(spec)}")
    return OK


async def cancel(api: Api, args: argparse.Namespace) -> int:
    generation = await api.call("POST", f"/api/predictions/{args.id}/cancel")
    _json(generation) if args.json else out.print(_line(generation))
    return OK


async def delete(api: Api, args: argparse.Namespace) -> int:
    """The generation and its images, for good (the API refuses an unfinished one: cancel it first)."""
    await api.call("DELETE", f"/api/predictions/{args.id}")
    _json({"id": args.id, "deleted": True}) if args.json else out.print(f"{args.id}  deleted")
    return OK


async def watch(api: Api, args: argparse.Namespace) -> int:
    async for generation in api.events("/api/generations/events"):
        _json(generation) if args.json else out.print(f"{time.strftime('%H:%M:%S')}  {_line(generation)}")
    return OK


COMMANDS = {
    "generate": generate,
    "list": list_,
    "show": show,
    "cancel": cancel,
    "delete": delete,
    "watch": watch,
    "models": models,
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="studio", description="Studio's image generation API from a terminal.")
    commands = top.add_subparsers(dest="command", required=True)
    each = {
        "generate": commands.add_parser("generate", help="make an image, follow it live and save it"),
        "list": commands.add_parser("list", help="your generations, newest first"),
        "show": commands.add_parser("show", help="one generation"),
        "cancel": commands.add_parser("cancel", help="cancel an unfinished generation"),
        "delete": commands.add_parser("delete", help="delete a finished generation and its images, for good"),
        "watch": commands.add_parser("watch", help="one line per change of any of your generations"),
        "models": commands.add_parser("models", help="the models and their options"),
    }
    each["generate"].add_argument("prompt")
    each["generate"].add_argument("--model", default=None, help="one of the API's models (default: its default)")
    each["generate"].add_argument("--output", type=Path, help="where to save the image (default: <id>.<ext>)")
    each["generate"].add_argument("--no-wait", action="store_true", help="print the new generation and exit")
    each["generate"].add_argument(
        "--input",
        action="append",
        type=input_option,
        metavar="NAME=VALUE",
        help="one of the model's options (see `studio models`); VALUE is read as JSON when it is, else as text",
    )
    each["generate"].add_argument(
        "--image", type=Path, metavar="FILE", help="a reference image (PNG, JPEG or WebP), for models that take one"
    )
    each["generate"].add_argument(
        "--webhook", metavar="URL", help="also tell this URL when the generation completes (a signed webhook)"
    )
    each["list"].add_argument("--limit", type=int, default=20)
    for name in ("show", "cancel", "delete"):
        each[name].add_argument("id")
    for sub in each.values():
        sub.add_argument("--json", action="store_true", help="print only JSON: the API's own objects")
    return top


async def _run(args: argparse.Namespace) -> int:
    api = Api.from_env()
    try:
        return await COMMANDS[args.command](api, args)
    finally:
        await api.aclose()


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        code = asyncio.run(_run(args))
    except Refused as exc:
        err.print(str(exc))
        code = REFUSED
    except KeyboardInterrupt:
        if State.generation_id:
            err.print(f"Stopped waiting; the generation goes on: studio show {State.generation_id}")
            sys.stdout.write(f"{State.generation_id}\n")
        code = INTERRUPTED
    sys.exit(code)
