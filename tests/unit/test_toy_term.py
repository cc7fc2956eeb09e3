"""Adding a loss term is one module and its weight field: a toy term registered from this file alone is in the loss,
the logs, the evaluation, the card's formula and metrics table, and the loss plot (docs/design.md, "Adding a term")."""

from dataclasses import dataclass, field

import matplotlib.axes
import pytest
import torch
from tiny import premasked_dataset, tiny_teacher
from transformers import default_data_collator

from hf_distil import DistillationArguments, DistillationTrainer, create_student
from hf_distil.terms import Term, names, register, unregister
from hf_distil.terms.base import every_position, weight_text


class ToyTerm(Term):
    """The mean squared activation of the student's last hidden state (no teacher): a term in a dozen lines."""

    name = "toy"
    weight = "alpha_toy"
    rows = "N"
    student_reads = ("last_hidden_state",)
    label = "toy"
    metric_name = "Toy loss (mean squared activation)"
    citation = "this test"
    fields = ("alpha_toy",)
    card_rank = 70

    def per_row(self, student, teacher, rows, args, plan):
        hidden = student.last_hidden_state.float()
        return every_position(hidden.square().mean(-1).reshape(-1), rows)

    def describe(self, args, context):
        return (f"a toy penalty on the activations (weight {weight_text(args.alpha_toy)})",
                f"{weight_text(args.alpha_toy)} · toy")


@dataclass
class ToyArguments(DistillationArguments):
    alpha_toy: float = field(default=0.5, metadata={"help": "Weight of the toy term (>= 0)."})


@pytest.fixture
def toy():
    term = register(ToyTerm())
    yield term
    unregister(term.name)


def test_a_term_registered_from_a_test_file_is_in_the_loss_logs_card_and_plot(tmp_path, toy, monkeypatch):
    assert names()[-1] == "toy"
    teacher = tiny_teacher(dropout=0.0)
    student = create_student(teacher, 2)
    data = premasked_dataset(16, seed=2)
    args = ToyArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, alpha_kd=1.0, alpha_mlm=0.0,
                        alpha_hidden=0.0, max_steps=2, logging_steps=1, per_device_train_batch_size=4,
                        eval_strategy="steps", eval_steps=2, save_strategy="no", disable_tqdm=True)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data,
                                  eval_dataset=data, data_collator=default_data_collator)
    batch = default_data_collator([data[i] for i in range(4)])
    trainer.model.eval()
    with torch.no_grad():
        loss, terms = trainer.compute_loss(trainer.model, batch, return_outputs=True)
        hidden = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               output_hidden_states=True).hidden_states[-1]
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(terms["toy"], hidden[real].square().mean(-1).mean())  # its formula, over N
    torch.testing.assert_close(loss, terms["kd"] + 0.5 * terms["toy"])  # weighted into the loss

    plotted = []
    original = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda self, *a, **k: plotted.append(k.get("label")) or original(self, *a, **k))
    trainer.train()
    assert all("toy_loss" in e for e in trainer.state.log_history if "loss" in e and "train_loss" not in e)
    assert any("eval_toy_loss" in e for e in trainer.state.log_history)
    trainer.create_model_card()
    card = (tmp_path / "out" / "README.md").read_text()
    assert "loss = 1.0 · T² · KL + 0.5 · toy" in card and "a toy penalty on the activations (weight 0.5)" in card
    assert "| Toy loss (mean squared activation) |" in card and ", toy " in card  # metrics table, last-log line
    assert "toy" in plotted
    with pytest.raises(ValueError, match="alpha_toy=-1.0 must be a finite number >= 0"):
        ToyArguments(output_dir=str(tmp_path), alpha_toy=-1.0)


def test_a_term_is_registered_once_and_leaves_no_trace_when_removed(toy):
    with pytest.raises(ValueError, match="already registered"):
        register(ToyTerm())
    unregister("toy")
    assert "toy" not in names()
    register(toy)  # for the fixture's teardown
