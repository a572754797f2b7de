"""A Qwen2-VL checkpoint (model_type qwen2_vl) behind the OpenAI-compatible server: an image request and a video
request answer what the pipeline answers."""

from __future__ import annotations

import pytest

from hf_reference import build_hf_qwen2vl_checkpoint
from serve_util import client, data_uri, image_message, png_bytes, running_server, small_video


@pytest.fixture(scope="module")
def qwen2_pipe(tmp_path_factory):
    import qwenvl
    return qwenvl.load(build_hf_qwen2vl_checkpoint(tmp_path_factory.mktemp("qwen2vl_serve")), dtype="float32")


def test_image_and_video_requests(qwen2_pipe, tmp_path):
    assert qwen2_pipe.model.config.model_type == "qwen2_vl"
    image_msgs = image_message(data_uri(png_bytes()))
    small_video(tmp_path / "clip.mp4", frames=8, fps=4)
    uri = data_uri((tmp_path / "clip.mp4").read_bytes(), "video/mp4")
    question = {"type": "text", "text": "What happens?"}
    video_msgs = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": uri}}, question]}]
    video_local = [{"role": "user", "content": [{"type": "video", "video": str(tmp_path / "clip.mp4")}, question]}]
    with running_server(qwen2_pipe, max_batch=2, max_model_len=1024) as (base, _, _):
        c = client(base)
        for msgs, local in ((image_msgs, image_msgs), (video_msgs, video_local)):
            ref = qwen2_pipe.chat(local, max_new_tokens=5, temperature=0, ignore_eos=True)
            r = c.chat.completions.create(model="qwenvl", messages=msgs, max_tokens=5, temperature=0,
                                          extra_body={"ignore_eos": True})
            assert r.choices[0].message.content == ref.text
            assert r.usage.prompt_tokens == ref.prompt_tokens
