"""TextAttributionCallback in a Trainer: Hugging Face BERT built from a config and our TextClassifier,
bit-identical training, coloured HTML to W&B (wandb.Html) and to files, trigger scores, setup errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import hf_bert, logged_csv_figures, quiet_trainer, read_wandb_history, wandb_run_dir
from pytorch_lightning.loggers import CSVLogger, WandbLogger
from torch import nn

from xai_lightning import LayerNotFoundError, SequenceClassifier, TextAttributionCallback, TextClassifier
from xai_lightning.data import TriggerTextDataModule

METHODS = ["integrated_gradients", "gradient_x_input", "occlusion", "kernel_shap"]


def datamodule(num_train: int = 128) -> TriggerTextDataModule:
    return TriggerTextDataModule(num_train=num_train, num_val=32, batch_size=32, max_length=16, min_length=6)


class StepCounter(pl.Callback):
    steps = 0

    def on_train_batch_start(self, *args) -> None:
        StepCounter.steps += 1


def fit_text(tmp_path: Path, network: nn.Module, callbacks: list, logger=None, epochs: int = 2, num_train: int = 128):
    pl.seed_everything(0)
    model = SequenceClassifier(network.train(), pad_id=0, lr=3e-3)
    trainer = quiet_trainer(
        max_epochs=epochs,
        callbacks=callbacks,
        logger=logger or CSVLogger(str(tmp_path)),
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(model, datamodule(num_train))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, trainer


def test_bert_trains_bit_identically_with_the_callback_and_logs_html_to_wandb(tmp_path):
    vocab = datamodule()._make(0, 0).vocab_size
    plain, _ = fit_text(tmp_path / "plain", hf_bert(vocab, dropout=0.1), [])
    logger = WandbLogger(offline=True, save_dir=str(tmp_path / "observed"), project="text-test")
    callback = TextAttributionCallback(methods=METHODS, num_probe=6, steps=8, num_samples=64, max_sentences=3)
    observed, _ = fit_text(tmp_path / "observed", hf_bert(vocab, dropout=0.1), [callback], logger=logger)
    logger.experiment.finish()
    assert plain.keys() == observed.keys()
    for key in plain:
        assert torch.equal(plain[key], observed[key]), key  # dropout on: any RNG leak would show
    assert callback.layer_name == "network.bert.embeddings.word_embeddings"
    run = wandb_run_dir(tmp_path / "observed")
    history = read_wandb_history(run)
    pages = [record for record in history if "text/tokens.path" in record]
    assert len(pages) == 2 and all(page["text/tokens._type"] == "html-file" for page in pages)
    html = (run / "files" / pages[-1]["text/tokens.path"]).read_text()
    assert html.count("<tr>") == 4 and "xai-gt" in html and "rgba(" in html  # 3 sentences, triggers underlined
    scalars = [record for record in history if "text/chance_precision" in record]
    assert len(scalars) == 2
    for method in METHODS:
        assert 0.0 <= scalars[-1][f"text/{method}/top1_precision"] <= 1.0
        assert f"text/{method}/mass_on_triggers" in scalars[-1]


def test_our_text_classifier_writes_html_files_for_a_csv_logger_and_learns_the_triggers(tmp_path):
    vocab = datamodule()._make(0, 0).vocab_size
    callback = TextAttributionCallback(methods=["integrated_gradients", "occlusion"], num_probe=16, steps=16)
    torch.manual_seed(0)  # the network is built before fit_text seeds
    _, trainer = fit_text(
        tmp_path, TextClassifier(vocab, 2, dim=32, depth=1, max_length=16), [callback], epochs=3, num_train=1024
    )
    files = sorted(Path(trainer.logger.log_dir).glob("xai/text/tokens/step_*.html"))
    assert len(files) == 3
    text = files[-1].read_text()
    words = set(callback.vocabulary)
    assert "<table" in text and any(f">{word}<" in text for word in words)
    last = callback.history[-1]
    # Three epochs on 1,024 sentences (network seeds 0-4: IG 0.94-1.0, occlusion 0.81-1.0, chance 0.16).
    # Occlusion is the weaker: with two triggers, removing one barely moves a saturated probability.
    assert last["text/integrated_gradients/top1_precision"] > 0.8 > 4 * last["text/chance_precision"]
    assert last["text/occlusion/top1_precision"] > 0.6


def test_a_model_without_an_embedding_layer_fails_at_setup(tmp_path):
    class OneHotText(nn.Module):
        """Embeds tokens by a linear map of one-hot vectors: no nn.Embedding to attribute to."""

        def __init__(self, vocab: int) -> None:
            super().__init__()
            self.vocab = vocab
            self.num_classes = 2
            self.embed = nn.Linear(vocab, 8)
            self.head = nn.Linear(8, 2)

        def forward(self, ids):
            return self.head(self.embed(nn.functional.one_hot(ids, self.vocab).float()).mean(1))

    vocab = datamodule()._make(0, 0).vocab_size
    StepCounter.steps = 0
    with pytest.raises(
        LayerNotFoundError,
        match=r"Found no embedding layer in .*no nn.Embedding receives the input "
        r"token ids.*embedding_layer='<dotted name>'",
    ):
        fit_text(tmp_path, OneHotText(vocab), [TextAttributionCallback(num_probe=4), StepCounter()])
    assert StepCounter.steps == 0
    # Occlusion needs no embedding layer: the same model is explained.
    callback = TextAttributionCallback(methods=["occlusion"], num_probe=4)
    fit_text(tmp_path / "occlusion", OneHotText(vocab), [callback], epochs=1)
    assert "text/occlusion/top1_precision" in callback.history[-1]


def test_bad_targets_and_probes_fail_at_setup(tmp_path):
    vocab = datamodule()._make(0, 0).vocab_size
    StepCounter.steps = 0
    with pytest.raises(ValueError, match=r"returned shape \(1, 2\)"):
        fit_text(
            tmp_path,
            TextClassifier(vocab, 2, max_length=16),
            [TextAttributionCallback(num_probe=4, target=lambda logits: logits), StepCounter()],
        )
    with pytest.raises(ValueError, match="out of range: the model has 2 classes"):
        fit_text(tmp_path, TextClassifier(vocab, 2, max_length=16), [TextAttributionCallback(num_probe=4, target=5)])
    assert StepCounter.steps == 0
    with pytest.raises(ValueError, match="Unknown text attribution method"):
        TextAttributionCallback(methods=["integrated_gradient"])


def test_a_callable_target_explains_the_margin(tmp_path):
    vocab = datamodule()._make(0, 0).vocab_size
    callback = TextAttributionCallback(
        methods=["gradient_x_input"], num_probe=4, target=lambda logits: logits[:, 1] - logits[:, 0]
    )
    fit_text(tmp_path, TextClassifier(vocab, 2, max_length=16), [callback], epochs=1)
    assert callback.failures == [] and "text/gradient_x_input/top1_precision" in callback.history[-1]


def logged_text_figures(tmp_path: Path, devices: int) -> list[dict[str, float]]:
    pl.seed_everything(0)
    torch.manual_seed(0)
    vocab = datamodule()._make(0, 0).vocab_size
    model = SequenceClassifier(TextClassifier(vocab, 2, dim=16, max_length=16), pad_id=0, lr=0.0, weight_decay=0.0)
    logger = CSVLogger(str(tmp_path), name="run", version=0)
    callback = TextAttributionCallback(methods=["integrated_gradients", "occlusion"], num_probe=7, steps=8)
    trainer = quiet_trainer(
        max_epochs=1,
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        callbacks=[callback],
        logger=logger,
        enable_checkpointing=False,
        deterministic=False,
    )
    trainer.fit(model, datamodule())
    return logged_csv_figures(tmp_path / "run" / "version_0", "text/")


@pytest.mark.ddp
def test_two_process_ddp_logs_the_same_text_figures_as_one_process(tmp_path):
    single = logged_text_figures(tmp_path / "single", devices=1)
    double = logged_text_figures(tmp_path / "ddp", devices=2)
    assert len(single) == len(double) == 1
    assert single[0].keys() == double[0].keys() and "text/occlusion/mass_on_triggers" in single[0]
    for key in single[0]:
        assert double[0][key] == pytest.approx(single[0][key], abs=1e-5), key
    assert len(list((tmp_path / "ddp").glob("**/xai/text/tokens/step_*.html"))) == 1  # rank zero alone wrote it


def test_html_goes_to_files_for_file_and_tensorboard_sinks_and_through_a_sinks_own_html_method(tmp_path):
    from pytorch_lightning.loggers import TensorBoardLogger

    from xai_lightning.logging import FileSink, SinkSet, TensorBoardSink, log_html, token_html

    received = []

    class HtmlAware(FileSink):
        def html(self, key, html, step):
            received.append((key, step))

    document = token_html([["a", "<b>"]], {"ig": [torch.tensor([0.5, -1.0])]}, relevant=[[True, False]])
    assert "&lt;b&gt;" in document and "xai-gt" in document and "rgba(40,90,220,1.000)" in document
    sinks = SinkSet(
        [
            FileSink(directory=tmp_path / "files"),
            TensorBoardSink(TensorBoardLogger(str(tmp_path / "tb"))),
            HtmlAware(directory=tmp_path / "aware"),
        ]
    )
    written = log_html(sinks, "text/tokens", document, 7)
    assert len(written) == 2 and all(path.name == "step_00000007.html" for path in written)
    assert all(path.read_text() == document for path in written)
    assert received == [("text/tokens", 7)]
