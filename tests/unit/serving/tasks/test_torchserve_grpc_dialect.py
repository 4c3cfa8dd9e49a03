"""TorchServe gRPC (inference + management) through stubs generated from this project's proto."""

from __future__ import annotations

import json
import os
from pathlib import Path

import grpc
from google.protobuf import empty_pb2
from grpc import aio
from tasks_fixtures import dialect, run

from serving.generated import torchserve_inference_pb2 as inf
from serving.generated import torchserve_inference_pb2_grpc as inf_grpc
from serving.generated import torchserve_management_pb2 as mgmt
from serving.generated import torchserve_management_pb2_grpc as mgmt_grpc

DATA = Path(__file__).resolve().parents[3] / "data"
DIGIT7 = (DATA / "images" / "digit7.png").read_bytes()


def test_grpc_ping_predictions_streams_and_management(image_store: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("tok")
    os.chmod(token_file, 0o600)

    async def scenario() -> None:
        async with dialect(image_store, api_token_file=token_file) as d:
            server = aio.server()
            d.parts.add_grpc_services(server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            try:
                async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                    stub = inf_grpc.InferenceAPIsServiceStub(channel)
                    ping = await stub.Ping(empty_pb2.Empty())
                    assert json.loads(ping.health) == {"status": "Healthy"}
                    http = (await d.http.post("/predictions/digits?topk=3",
                                              content=DIGIT7)).json()
                    got = await stub.Predictions(inf.PredictionsRequest(
                        model_name="digits", input={"data": DIGIT7, "topk": b"3"}))
                    assert json.loads(got.prediction) == http
                    streamed = [r async for r in stub.StreamPredictions(inf.PredictionsRequest(
                        model_name="digits", model_version="1", input={"data": DIGIT7}))]
                    assert len(streamed) == 1 and len(json.loads(streamed[0].prediction)) == 5
                    for request, code in [
                        (inf.PredictionsRequest(model_name="nope", input={"data": DIGIT7}),
                         grpc.StatusCode.NOT_FOUND),
                        (inf.PredictionsRequest(model_name="digits", input={"data": b"junk"}),
                         grpc.StatusCode.INVALID_ARGUMENT),
                        (inf.PredictionsRequest(model_name="digits", input={"image": DIGIT7}),
                         grpc.StatusCode.INVALID_ARGUMENT)]:
                        try:
                            await stub.Predictions(request)
                            raise AssertionError("expected an error")
                        except aio.AioRpcError as exc:
                            assert exc.code() == code, exc.details()

                    async def requests():  # type: ignore[no-untyped-def]
                        yield inf.PredictionsRequest(model_name="digits", input={"data": b"x"},
                                                     sequence_id="s")
                        yield inf.PredictionsRequest(model_name="digits", input={"data": DIGIT7},
                                                     sequence_id="s")
                    answers = [r async for r in stub.StreamPredictions2(requests())]
                    assert answers[0].status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
                    assert json.loads(answers[1].prediction) and answers[1].sequence_id == "s"

                    manage = mgmt_grpc.ManagementAPIsServiceStub(channel)
                    try:
                        await manage.ListModels(mgmt.ListModelsRequest())
                        raise AssertionError("expected UNAUTHENTICATED")
                    except aio.AioRpcError as exc:
                        assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
                    meta = (("authorization", "Bearer tok"),)
                    listed = await manage.ListModels(mgmt.ListModelsRequest(limit=100),
                                                     metadata=meta)
                    assert "digits" in [m["modelName"] for m in json.loads(listed.msg)["models"]]
                    await manage.ScaleWorker(mgmt.ScaleWorkerRequest(
                        model_name="digits", min_worker=2), metadata=meta)
                    assert d.service.describe_model("digits")[0].instances == 2
                    try:
                        await manage.RegisterModel(mgmt.RegisterModelRequest(
                            url="https://example.com/a.mar"), metadata=meta)
                        raise AssertionError("expected a refusal")
                    except aio.AioRpcError as exc:  # model control is off on this server
                        assert exc.code() == grpc.StatusCode.PERMISSION_DENIED
            finally:
                await server.stop(None)
    run(scenario)
