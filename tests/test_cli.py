"""The installed `studio` command, run as a subprocess against the real stack: generate (saving the image, exit
codes 0/1/2, Ctrl-C stops waiting but not the generation), list, show, cancel, watch, and `--json`."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
import uuid
from pathlib import Path

import pytest
from PIL import Image

from devstack.tokens import issue_token
from tests.helpers import JWT_SECRET, eventually, metric, metrics_of, wait_for_status

STUDIO = Path(sys.executable).with_name("studio")


@pytest.fixture
def cli_env(urls, user_id) -> dict[str, str]:
    return {**os.environ, "STUDIO_API_URL": urls.api, "STUDIO_TOKEN": issue_token(JWT_SECRET, user_id)}


async def studio(env, *args: str, cwd: Path | None = None, timeout: float = 60) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        str(STUDIO), *args, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_generate_follows_the_generation_and_saves_the_image(http, urls, auth, cli_env, tmp_path):
    code, out, err = await studio(cli_env, "generate", "a red kite #sim:delay=0.5", cwd=tmp_path)

    assert code == 0, err
    [saved] = list(tmp_path.iterdir())
    generation_id = saved.stem
    done = await wait_for_status(http, urls.api, generation_id, auth)
    assert done["status"] == "succeeded"
    assert saved.name == f"{generation_id}.png" and saved.name in out
    assert saved.read_bytes() == (await http.get(done["outputUrl"])).content


async def test_generate_json_prints_only_the_final_generation_and_saves_where_asked(
    http, urls, auth, cli_env, tmp_path
):
    target = tmp_path / "kite.png"
    code, out, err = await studio(
        cli_env, "generate", "a blue kite #sim:delay=0.2", "--output", str(target), "--json", cwd=tmp_path
    )

    assert code == 0, err
    printed = json.loads(out)
    assert printed == await wait_for_status(http, urls.api, printed["id"], auth)
    assert printed["status"] == "succeeded"
    assert target.read_bytes().startswith(b"\x89PNG")


async def test_a_failed_generation_exits_1_with_skytells_message(cli_env, tmp_path):
    code, _, err = await studio(cli_env, "generate", "doomed #sim:fail", cwd=tmp_path)

    assert code == 1
    assert "Simulated failure: the model could not generate this image" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("env_change", "args", "says"),
    [
        ({"STUDIO_TOKEN": "not-a-token"}, ("list",), "did not accept your token"),
        ({}, ("generate", "x", "--model", "no-such-model"), "Invalid model"),
        ({}, ("show", str(uuid.uuid4())), "No generation of yours has that id"),
        ({"STUDIO_TOKEN": ""}, ("list",), "Set STUDIO_TOKEN"),
        ({"STUDIO_API_URL": "http://127.0.0.1:9"}, ("list",), "Could not reach the API"),
    ],
)
async def test_a_refusal_exits_2_with_a_sentence(cli_env, tmp_path, env_change, args, says):
    code, out, err = await studio({**cli_env, **env_change}, *args, cwd=tmp_path)

    assert code == 2
    assert says in err and "Traceback" not in err
    assert not err.lstrip().startswith("{")


async def test_ctrl_c_stops_waiting_not_the_generation_and_prints_its_id(http, urls, auth, cli_env, tmp_path):
    process = await asyncio.create_subprocess_exec(
        str(STUDIO),
        "generate",
        "a very long exposure #sim:delay=60",
        env=cli_env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    created = await asyncio.wait_for(process.stderr.readline(), 30)
    assert b"created" in created
    process.send_signal(signal.SIGINT)
    out, _ = await asyncio.wait_for(process.communicate(), 30)

    assert process.returncode == 130
    generation_id = out.decode().strip()
    assert generation_id in created.decode()
    still = await http.get(f"{urls.api}/api/predictions/{generation_id}", headers=auth)
    assert still.json()["status"] in ("queued", "processing")


async def test_list_show_and_cancel_print_the_apis_objects_with_json(http, urls, auth, cli_env, tmp_path):
    code, out, _ = await studio(cli_env, "generate", "list me #sim:delay=60", "--no-wait", "--json")
    assert code == 0
    created = json.loads(out)
    # Settled in `processing` for a minute: the CLI's page and the API's are read while nothing changes.
    await wait_for_status(http, urls.api, created["id"], auth, statuses=("processing",))

    code, out, _ = await studio(cli_env, "list", "--limit", "5", "--json")
    assert code == 0
    assert json.loads(out) == (await http.get(f"{urls.api}/api/generations?limit=5", headers=auth)).json()

    code, out, _ = await studio(cli_env, "list")
    assert code == 0 and created["id"] in out

    code, out, _ = await studio(cli_env, "show", created["id"], "--json")
    assert code == 0 and json.loads(out)["id"] == created["id"]

    code, out, _ = await studio(cli_env, "cancel", created["id"], "--json")
    assert code == 0 and json.loads(out)["status"] == "canceled"

    code, _, err = await studio(cli_env, "cancel", created["id"])
    assert code == 2 and "already finished" in err


async def test_watch_prints_one_line_per_change_of_the_users_generations(http, urls, auth, cli_env):
    before = metric(await metrics_of(http, urls.api), "studio_api_live_watchers")
    process = await asyncio.create_subprocess_exec(
        str(STUDIO), "watch", "--json", env=cli_env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    lines: list[dict] = []

    async def read() -> None:
        assert process.stdout is not None
        while line := await process.stdout.readline():
            lines.append(json.loads(line))

    reader = asyncio.create_task(read())
    try:
        # The command has nothing to print until something changes: wait until its stream is open.
        await eventually("the command's stream", lambda: _watchers_above(http, urls.api, before))
        body = {"prompt": "watched #sim:delay=0.3"}
        created = (await http.post(f"{urls.api}/api/generate", json=body, headers=auth)).json()
        done = {"id": created["id"], "status": "succeeded"}
        await eventually("the succeeded line", lambda: any(line.items() >= done.items() for line in lines))
    finally:
        process.send_signal(signal.SIGINT)
        await asyncio.wait_for(process.wait(), 30)
        await reader

    statuses = [line["status"] for line in lines if line["id"] == created["id"]]
    assert statuses[0] in ("queued", "processing") and statuses[-1] == "succeeded"
    assert {line["id"] for line in lines} == {created["id"]}


async def _watchers_above(http, api: str, count: float) -> bool:
    return metric(await metrics_of(http, api), "studio_api_live_watchers") > count


async def test_delete_removes_a_finished_generation_and_refuses_an_unfinished_one(http, urls, auth, cli_env):
    code, out, _ = await studio(cli_env, "generate", "delete me #sim:delay=0.1", "--no-wait", "--json")
    assert code == 0
    created = json.loads(out)
    await wait_for_status(http, urls.api, created["id"], auth)
    code, out, _ = await studio(cli_env, "generate", "still going #sim:delay=60", "--no-wait", "--json")
    running = json.loads(out)

    code, out, _ = await studio(cli_env, "delete", created["id"])
    assert code == 0 and out.strip() == f"{created['id']}  deleted"
    assert (await http.get(f"{urls.api}/api/predictions/{created['id']}", headers=auth)).status_code == 404

    code, _, err = await studio(cli_env, "delete", created["id"])
    assert code == 2 and "No generation of yours has that id" in err
    code, _, err = await studio(cli_env, "delete", running["id"], "--json")
    assert code == 2 and "cancel it first" in err
    await studio(cli_env, "cancel", running["id"])
    code, out, _ = await studio(cli_env, "delete", running["id"], "--json")
    assert code == 0 and json.loads(out) == {"id": running["id"], "deleted": True}


async def test_generate_with_inputs_saves_every_output(http, urls, auth, cli_env, tmp_path):
    options = ["width=512", "height=768", "num_outputs=2", "seed=7", "output_format=jpeg", "negative_prompt=fog"]
    args = [part for option in options for part in ("--input", option)]
    code, out, err = await studio(cli_env, "generate", "two kites", *args, "--json", cwd=tmp_path)

    assert code == 0, err
    printed = json.loads(out)
    assert printed["input"] == {
        "width": 512, "height": 768, "num_outputs": 2, "seed": 7, "output_format": "jpeg", "negative_prompt": "fog",
    }  # fmt: skip
    gid = printed["id"]
    assert sorted(path.name for path in tmp_path.iterdir()) == [f"{gid}-1.jpg", f"{gid}.jpg"]
    for path, url in zip((tmp_path / f"{gid}.jpg", tmp_path / f"{gid}-1.jpg"), printed["outputUrls"], strict=True):
        with Image.open(path) as picture:
            assert (picture.format, picture.size) == ("JPEG", (512, 768))
        assert path.read_bytes() == (await http.get(url)).content


async def test_an_input_the_model_refuses_exits_2_naming_it(cli_env, tmp_path):
    code, _, err = await studio(cli_env, "generate", "x", "--input", 'seed="7"', cwd=tmp_path)
    assert code == 2 and "Invalid input: seed:" in err
    code, _, err = await studio(cli_env, "generate", "x", "--input", "=3", cwd=tmp_path)
    assert code == 2 and "NAME=VALUE" in err


async def test_image_uploads_a_reference_for_the_model_that_takes_one(http, urls, cli_env, tmp_path):
    reference = tmp_path / "sketch.webp"
    Image.new("RGB", (32, 32), (250, 200, 0)).save(reference, "WEBP")
    prompt = f"from my sketch {uuid.uuid4().hex}"
    args = ("generate", prompt, "--model", "truefusion-2.0", "--image", str(reference), "--no-wait", "--json")
    code, out, err = await studio(cli_env, *args, cwd=tmp_path)

    assert code == 0, err
    assert json.loads(out)["input"]["image"].startswith("upload:")
    (record,) = [r for r in (await http.get(f"{urls.simulator}/_sim/predictions")).json() if r["prompt"] == prompt]
    assert base64.b64decode(record["imageBytes"]) == reference.read_bytes()

    code, _, err = await studio(cli_env, "generate", "x", "--image", str(reference), cwd=tmp_path)
    assert code == 2 and "takes no reference image" in err  # the default model has no such input


async def test_models_lists_each_model_and_its_options(http, urls, auth, cli_env):
    code, out, _ = await studio(cli_env, "models", "--json")
    assert code == 0 and json.loads(out) == (await http.get(f"{urls.api}/api/models", headers=auth)).json()

    code, out, _ = await studio(cli_env, "models")
    assert code == 0
    assert "truefusion-pro  (default)" in out and "truefusion-2.0" in out
    assert "--input width=…  integer, 256..2048, multiple of 64, default 1024" in out
    assert "--input image=…  reference image (--image FILE)" in out


async def test_generate_with_a_webhook_asks_for_it(http, urls, auth, cli_env, tmp_path):
    hook = "https://hooks.example.com/studio"
    code, out, err = await studio(cli_env, "generate", "told #sim:delay=30", "--webhook", hook, "--no-wait", "--json")
    assert code == 0, err
    created = json.loads(out)
    assert created["webhook"] == hook and created["webhookEventsFilter"] == ["completed"]
    code, _, err = await studio(cli_env, "generate", "told", "--webhook", "ftp://nowhere", "--no-wait")
    assert code == 2 and "webhook" in err.lower()
