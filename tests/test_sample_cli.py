"""python -m shared.sample against a tiny random GPT-2 served as "124M" from a temporary mirror."""
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import shared.download
import shared.sample
from fake_gpt2 import hf_gpt2_from_tf_variables, write_fake_gpt2
from shared.generate import generate
from shared.gpt2 import load_pretrained_gpt2
from shared.sample import decode_stream, main
from shared.tokenizer import EOT_ID, text_to_token_ids

REPO = Path(__file__).resolve().parents[1]
HPARAMS = {"n_vocab": 50257, "n_ctx": 48, "n_embd": 32, "n_head": 4, "n_layer": 2}
PROMPT = "Every effort moves you"


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    """(env for the subprocess, models_dir, tf_vars); the weights are fetched once, here."""
    mirror, models = tmp_path_factory.mktemp("mirror"), tmp_path_factory.mktemp("models")
    tf_vars = write_fake_gpt2(mirror, "124M", HPARAMS)
    env = {**os.environ, "PYTHONIOENCODING": "utf-8",
           "LLM_MIRROR": os.pathsep.join([str(mirror), os.environ.get("LLM_MIRROR", "")])}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLM_MIRROR", env["LLM_MIRROR"])
        load_pretrained_gpt2("124M", models, progress=False)  # download + cache
    return env, models, tf_vars


def sample(fake, *args):
    env, models, _ = fake
    cmd = [sys.executable, "-m", "shared.sample", "--gpt2", "124M", "--models-dir", str(models),
           "--prompt", PROMPT, "--device", "cpu", *args]
    run = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, encoding="utf-8")
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_greedy_text_matches_hugging_face(fake, tokenizer):
    _, _, tf_vars = fake
    hf = hf_gpt2_from_tf_variables(tf_vars, HPARAMS)
    prompt = text_to_token_ids(PROMPT, tokenizer)
    ids = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=30,
                      do_sample=False, pad_token_id=0)
    expected = tokenizer.decode(ids[0].tolist()) + "\n"
    assert sample(fake, "--max-new-tokens", "30", "--temperature", "0") == expected


def test_seeded_sampling_follows_temperature_and_top_k(fake, tokenizer):
    _, models, _ = fake
    out = sample(fake, "--max-new-tokens", "30", "--temperature", "1.5", "--top-k", "50",
                 "--seed", "123")
    model, _ = load_pretrained_gpt2("124M", models, progress=False)
    prompt = text_to_token_ids(PROMPT, tokenizer)
    texts = {}
    for seed in (123, 124):
        torch.manual_seed(seed)
        ids = generate(model, prompt, 30, HPARAMS["n_ctx"], temperature=1.5, top_k=50,
                       use_cache=True)
        texts[seed] = tokenizer.decode(ids[0].tolist()) + "\n"
    assert out == texts[123] != texts[124]


def test_tokens_are_printed_as_they_are_generated(fake, monkeypatch):
    _, models, _ = fake
    stdout, seen, kwargs = io.StringIO(), [], {}
    real_stream = shared.sample.generate_stream

    def watched_stream(*args, **kw):
        kwargs.update(kw)
        for token in real_stream(*args, **kw):
            seen.append(stdout.getvalue())  # what was printed before this token was produced
            yield token
    monkeypatch.setattr(shared.sample, "generate_stream", watched_stream)
    monkeypatch.setattr(sys, "stdout", stdout)
    main(["--models-dir", str(models), "--prompt", PROMPT, "--max-new-tokens", "6",
          "--temperature", "0", "--eos"])
    assert kwargs["eos_id"] == EOT_ID and kwargs["temperature"] == 0 and kwargs["top_k"] is None
    # Before each new token is produced, the text of all earlier ones is already out.
    assert len(seen) == 6 and seen[0] == PROMPT and len(seen[-1]) > len(PROMPT)
    printed = [*seen, stdout.getvalue()]
    assert all(later.startswith(earlier) for earlier, later in zip(printed, printed[1:]))


def test_decode_stream_holds_back_split_characters(tokenizer):
    text = "naïve café 👋🏽 世界 ok"
    ids = tokenizer.encode(text)

    def is_part_of_a_character(token_id):
        try:
            tokenizer.decode_single_token_bytes(token_id).decode("utf-8")
            return False
        except UnicodeDecodeError:
            return True
    assert any(map(is_part_of_a_character, ids))  # the text really splits characters
    pieces = list(decode_stream(ids, tokenizer))
    assert len(pieces) == len(ids) + 1  # one piece per token, then the flush
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)


def test_failed_download_exits_with_its_message(tokenizer, monkeypatch, tmp_path):
    """A DownloadError becomes `error: <message>` and exit status 1, not a traceback."""
    def offline(url, *args, **kwargs):
        raise shared.download._SourceError("offline (test)")
    monkeypatch.setattr(shared.download, "_fetch_with_retries", offline)
    monkeypatch.setenv("LLM_MIRROR", str(tmp_path / "empty-mirror"))
    with pytest.raises(SystemExit) as exit_:
        main(["--models-dir", str(tmp_path / "models"), "--device", "cpu"])
    message = str(exit_.value.code)  # python prints a str exit code to stderr and exits with 1
    assert message.startswith("error: could not download") and "124M/checkpoint" in message


@pytest.mark.parametrize("args, message", [
    (["--temperature", "-1"], "argument --temperature: must be a finite number >= 0, got '-1'"),
    (["--temperature", "nan"], "argument --temperature: must be a finite number, got 'nan'"),
    (["--top-k", "0"], "argument --top-k: must be an integer >= 1, got '0'"),
    (["--max-new-tokens", "-3"], "argument --max-new-tokens: must be an integer >= 0"),
    (["--prompt", ""], "the prompt is empty"),
    (["--gpt2", "2B"], "invalid choice"),
])
def test_bad_arguments_fail_before_loading(args, message, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(shared.sample, "load_pretrained_gpt2",
                        lambda *args, **kwargs: pytest.fail("loaded the model"))
    with pytest.raises(SystemExit) as exit_:
        main(["--models-dir", str(tmp_path), *args])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_unavailable_device_exits_with_its_message(tokenizer, monkeypatch):
    """Asking for a GPU this PyTorch cannot see gives get_device's advice, not a traceback."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_:
        main(["--device", "cuda"])
    assert str(exit_.value.code).startswith("error: device 'cuda' was asked for")


def test_os_errors_are_one_line(tokenizer, tmp_path, capsys):
    """A file where the models folder should be: `error: ...`, exit status 1, no traceback."""
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    with pytest.raises(SystemExit) as exit_:
        main(["--models-dir", str(a_file), "--device", "cpu"])
    message = str(exit_.value.code)
    assert message.startswith("error: ") and "\n" not in message and "not-a-folder" in message


# --- every failure is one line: the command line, in a real process -------------------------------

def run_sample(fake, *args, stdout=subprocess.PIPE):
    env, models, _ = fake
    cmd = [sys.executable, "-m", "shared.sample", "--gpt2", "124M", "--models-dir", str(models),
           "--prompt", PROMPT, "--device", "cpu", *args]
    return subprocess.run(cmd, env=env, cwd=REPO, stdout=stdout, stderr=subprocess.PIPE, text=True,
                          encoding="utf-8", timeout=120)


@pytest.mark.parametrize("args, flag", [
    (["--temperature", "1e-40"], "temperature"),    # logits / 1e-40 overflow: NaN probabilities
    (["--seed", str(2 ** 64)], "seed"),            # beyond what torch.manual_seed takes
    (["--seed", str(-2 ** 63 - 1)], "seed"),
])
def test_command_line_values_the_core_cannot_take_are_one_line(fake, args, flag):
    run = run_sample(fake, "--max-new-tokens", "5", *args)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr and flag in run.stderr.strip().splitlines()[-1]


def test_output_piped_into_head_exits_quietly(fake):
    """`python -m shared.sample ... | head -c 30`: head closes the pipe early; like cat or seq,
    the command stops without a BrokenPipeError traceback."""
    env, models, _ = fake
    cmd = (f"{sys.executable} -m shared.sample --gpt2 124M --models-dir {models} --prompt x "
           "--device cpu --max-new-tokens 40 --temperature 1 --seed 1 | head -c 1")
    run = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.stdout == "x"
    assert "Traceback" not in run.stderr and "BrokenPipe" not in run.stderr, run.stderr
    assert run.returncode in (0, 141)  # 141: SIGPIPE's status, as `seq 1e9 | head -1` gives
