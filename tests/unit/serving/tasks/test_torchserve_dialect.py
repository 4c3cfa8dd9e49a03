"""The TorchServe inference and management APIs on the real core, in-process, with tiny models.

Each test compares the HTTP answer with one computed without the server's code
(tests/helpers/reference.py: Pillow and numpy from the documented recipe, the TorchScript model,
numpy softmax/top-k), so a bug shared by the server's pre- and post-processing fails it, or checks
the documented error status; the bad-input corpus ends with a good request to show the server
keeps serving.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tasks_fixtures import dialect, run, write_mar

from tests.helpers.reference import assert_same_answer, expected_answer

DATA = Path(__file__).resolve().parents[3] / "data"
DIGIT7 = (DATA / "images" / "digit7.png").read_bytes()
PHOTO = (DATA / "images" / "photo.jpg").read_bytes()


def test_classification_raw_body_and_multipart_match_the_reference(image_store: Path) -> None:
    digits = image_store / "digits"
    other = (DATA / "images" / "digit0.png").read_bytes()
    want, want_other = expected_answer(digits, DIGIT7), expected_answer(digits, other)

    async def scenario() -> None:
        async with dialect(image_store) as d:
            raw = await d.http.post("/predictions/digits", content=DIGIT7)
            assert raw.status_code == 200, raw.text
            assert len(set(want.json.values())) == 5  # no ties: the order is meaningful
            assert_same_answer(raw.content, raw.headers["content-type"], want)
            versioned = await d.http.post("/predictions/digits/1.0?topk=3", content=DIGIT7)
            assert_same_answer(versioned.content, versioned.headers["content-type"],
                               expected_answer(digits, DIGIT7, topk=3))
            multi = await d.http.post("/predictions/digits", files=[
                ("data", ("a.png", DIGIT7, "image/png")), ("data", ("b.png", other, "image/png"))])
            assert multi.status_code == 200
            for got, expected in zip(multi.json(), (want, want_other), strict=True):
                assert_same_answer(json.dumps(got).encode(), "application/json", expected)
            v1 = await d.http.post("/v1/models/digits:predict", json={"instances": [
                {"data": base64.b64encode(DIGIT7).decode()}, base64.b64encode(other).decode()]})
            assert v1.status_code == 200
            for got, expected in zip(v1.json()["predictions"], (want, want_other), strict=True):
                assert_same_answer(json.dumps(got).encode(), "application/json", expected)
    run(scenario)


@pytest.mark.parametrize(("name", "status", "needle"), [
    ("truncated.png", 400, "PNG"), ("truncated.jpg", 400, "JPEG"), ("empty.bin", 400, "0 bytes"),
    ("text.txt", 400, "text"), ("huge_header.png", 413, "pixels"),
    ("one_pixel.png", 200, ""), ("cmyk.jpg", 200, ""), ("gray16.png", 200, ""),
    ("animated.gif", 200, ""),
])
def test_bad_input_corpus_gets_the_documented_status(image_store: Path, name: str, status: int,
                                                     needle: str) -> None:
    async def scenario() -> None:
        async with dialect(image_store) as d:
            resp = await d.http.post("/predictions/digits", content=(DATA / "corpus" / name)
                                     .read_bytes())
            assert resp.status_code == status, resp.text
            if status != 200:
                body = resp.json()
                assert body["code"] == status and needle in body["message"]
                assert body["type"] in ("BadRequestException", "RequestTooLargeException")
            ok = await d.http.post("/predictions/digits", content=DIGIT7)
            assert ok.status_code == 200
    run(scenario)


def test_errors_unknown_model_wrong_field_and_explain_of_a_classifier(image_store: Path) -> None:
    async def scenario() -> None:
        async with dialect(image_store) as d:
            missing = await d.http.post("/predictions/nope", content=DIGIT7)
            assert missing.status_code == 404 and missing.json()["type"] == \
                "ModelNotFoundException"
            wrong = await d.http.post("/predictions/digits",
                                      files=[("file", ("a.png", DIGIT7, "image/png"))])
            assert wrong.status_code == 400 and "no field 'data'" in wrong.json()["message"]
            assert (await d.http.post("/explanations/digits", content=DIGIT7)).status_code == 400
            assert (await d.http.post("/predictions/digits?topk=zero",
                                      content=DIGIT7)).status_code == 400
            ping = await d.http.get("/ping")
            assert ping.json() == {"status": "Healthy"}
            api = await d.http.request("OPTIONS", "/")
            assert "/predictions/{model_name}" in api.json()["paths"]
    run(scenario)


def test_segmentation_png_at_input_size_and_json(image_store: Path) -> None:
    # Noise, so a wrong resampling filter changes the mask.
    big = Image.fromarray(np.random.default_rng(0).integers(0, 256, (100, 200, 3), np.uint8))
    buf = io.BytesIO()
    big.save(buf, format="PNG")

    async def scenario() -> None:
        async with dialect(image_store) as d:
            png = await d.http.post("/predictions/seg", content=PHOTO)
            assert png.status_code == 200
            assert_same_answer(png.content, png.headers["content-type"],
                               expected_answer(image_store / "seg", PHOTO))
            mask = Image.open(io.BytesIO(png.content))
            assert mask.mode == "P" and mask.size == (64, 48)
            js = await d.http.post("/predictions/seg", content=PHOTO,
                                   headers={"accept": "application/json"})
            body = js.json()
            assert body["labels"] == ["background", "thing", "other"]
            assert np.array_equal(np.asarray(body["mask"]), np.asarray(mask))
            probs = await d.http.post("/predictions/seg?format=json&probabilities=true",
                                      content=PHOTO)
            assert set(probs.json()["probabilities"]) == {"background", "thing", "other"}
            # Fed at the model's max_side (64x32), answered at the image's size.
            scaled = await d.http.post("/predictions/seg", content=buf.getvalue())
            assert_same_answer(scaled.content, scaled.headers["content-type"],
                               expected_answer(image_store / "seg", buf.getvalue()))
            assert Image.open(io.BytesIO(scaled.content)).size == (200, 100)
    run(scenario)


def test_style_png_and_jpeg_match_the_model(image_store: Path) -> None:
    async def scenario() -> None:
        async with dialect(image_store) as d:
            png = await d.http.post("/predictions/style", content=PHOTO)
            assert_same_answer(png.content, png.headers["content-type"],
                               expected_answer(image_store / "style", PHOTO))
            assert Image.open(io.BytesIO(png.content)).size == (64, 48)
            jpg = await d.http.post("/predictions/style", content=PHOTO,
                                    headers={"accept": "image/jpeg"})
            assert jpg.headers["content-type"] == "image/jpeg" and jpg.content[:2] == b"\xff\xd8"
            bad = await d.http.post("/predictions/style?format=json", content=PHOTO)
            assert bad.status_code == 400 and "png or jpeg" in bad.json()["message"]
            habit = await d.http.post("/predictions/style", content=PHOTO,
                                      headers={"accept": "application/json"})
            assert habit.status_code == 200 and habit.headers["content-type"] == "image/png"
    run(scenario)


def test_capsule_answers_and_explanations(image_store: Path) -> None:
    async def scenario() -> None:
        async with dialect(image_store) as d:
            answer = await d.http.post("/predictions/caps", content=DIGIT7)
            assert_same_answer(answer.content, answer.headers["content-type"],
                               expected_answer(image_store / "caps", DIGIT7))
            plain = answer.json()
            assert "poses" not in plain
            full = (await d.http.post("/predictions/caps?poses=true&reconstruction=true",
                                      content=DIGIT7)).json()
            assert np.asarray(full["poses"]).shape == (10, 16)
            recon = Image.open(io.BytesIO(base64.b64decode(full["reconstruction"])))
            assert recon.size == (28, 28)
            explained = (await d.http.post("/explanations/caps", content=DIGIT7)).json()
            assert len(explained["pose"]) == 16 and explained["class"] == plain["class"]
            assert explained["perturbation"]["steps"][0] == -0.25
            grid = Image.open(io.BytesIO(base64.b64decode(
                explained["perturbation"]["grid_png"])))
            assert grid.size == (11 * 29 + 1, 16 * 29 + 1)
            png = await d.http.post("/explanations/caps?format=png", content=DIGIT7)
            assert png.headers["content-type"] == "image/png"
            # Rows differ: each sweeps a different pose dimension through the real decoder.
            arr = np.asarray(Image.open(io.BytesIO(png.content)))
            assert not np.array_equal(arr[1:29, 1:29], arr[1:29, -29:-1])
    run(scenario)


def test_management_list_describe_scale_and_refusals(image_store: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    os.chmod(token_file, 0o600)
    shutil.copy(DATA / "archives" / "zipslip.mar", image_store / "evil.mar")

    async def scenario() -> None:
        async with dialect(image_store, api_token_file=token_file,
                           enable_model_control=True) as d:
            assert "evil" not in d.service.model_names()  # refused at start, server up
            m = d.management
            assert (await m.get("/models")).status_code == 401
            bad = await m.get("/models", headers={"authorization": "Bearer wrong"})
            assert bad.status_code == 401 and bad.json()["code"] == 401
            auth = {"authorization": "Bearer s3cret"}
            page = (await m.get("/models?limit=2", headers=auth)).json()
            assert [x["modelName"] for x in page["models"]] == ["caps", "caps_decoder"]
            rest = (await m.get(f"/models?limit=10&next_page_token={page['nextPageToken']}",
                                headers=auth)).json()
            assert "digits" in [x["modelName"] for x in rest["models"]]
            desc = (await m.get("/models/digits", headers=auth)).json()[0]
            assert desc["batchSize"] == 16 and desc["minWorkers"] == 1
            scaled = await m.put("/models/digits?min_worker=3", headers=auth)
            assert scaled.status_code == 200, scaled.text
            assert d.service.describe_model("digits")[0].instances == 3
            assert (await m.get("/models/digits", headers=auth)).json()[0]["minWorkers"] == 3
            assert (await d.http.post("/predictions/digits", content=DIGIT7)).status_code == 200
            default = await m.put("/models/digits/1.0/set-default", headers=auth)
            assert default.status_code == 200 and '"1"' in default.json()["status"]
            assert (await m.put("/models/digits/7/set-default", headers=auth)).status_code == 404
            assert (await m.get("/models/nope", headers=auth)).json()["code"] == 404
            for url in ("http://169.254.169.254/model.mar", "https://example.com/x.mar",
                        "s3://bucket/x.mar"):
                r = await m.post("/models", params={"url": url}, headers=auth)
                assert r.status_code == 400 and "never fetched" in r.json()["message"]
            for url in ("../digits", "/etc", "digits/../../x.mar", "file:///etc/passwd"):
                r = await m.post("/models", params={"url": url}, headers=auth)
                assert r.status_code == 400 and "outside the model store" in r.json()["message"]
            r = await m.post("/models", params={"url": "evil.mar"}, headers=auth)
            assert r.status_code == 400 and "escapes" in r.json()["message"]
            gone = await m.delete("/models/style", headers=auth)
            assert gone.status_code == 200
            assert (await d.http.post("/predictions/style", content=PHOTO)).status_code in (
                404, 503)
            back = await m.post("/models", params={"url": "style"}, headers=auth)
            assert back.status_code == 200, back.text
            assert (await d.http.post("/predictions/style", content=PHOTO)).status_code == 200
    run(scenario)


def test_register_an_archive_from_the_store(image_store: Path) -> None:
    write_mar(image_store, "tiny")

    async def scenario() -> None:
        async with dialect(image_store, enable_model_control=True) as d:
            # Archives in the store are served from the start ...
            assert "tiny" in d.parts.archive_models
            ok = await d.http.post("/predictions/tiny", content=DIGIT7)
            assert ok.status_code == 200
            assert ok.json() == (await d.http.post("/predictions/digits", content=DIGIT7)).json()
            # ... and one copied in later registers by name.
            shutil.copy(image_store / "tiny.mar", image_store / "later.mar")
            r = await d.management.post("/models", params={"url": "later.mar"})
            assert r.status_code == 200, r.text
            assert (await d.http.post("/predictions/later", content=DIGIT7)).json() == ok.json()
            described = (await d.management.get("/models/later")).json()[0]
            assert described["runtime"] == "pytorch_libtorch"
    run(scenario)


def test_management_refuses_registration_without_model_control(image_store: Path) -> None:
    async def scenario() -> None:
        async with dialect(image_store) as d:
            r = await d.management.post("/models", params={"url": "digits"})
            assert r.status_code == 403 and "--enable-model-control" in r.json()["message"]
            assert (await d.management.delete("/models/digits")).status_code == 403
            assert json.loads((await d.management.get("/models")).text)["models"]
    run(scenario)
