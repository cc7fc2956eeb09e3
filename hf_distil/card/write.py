"""Write a distillation run's card into its output folder: the metrics of the weights being saved, the loss plot,
and the downstream table a recipe measured (DistillationTrainer.create_model_card calls this)."""

from __future__ import annotations

import os

from .downstream import update_model_card
from .facts import CardFacts
from .render import build_model_card


def weights_step(state, args) -> int:
    """The optimizer step of the student's current weights (the best checkpoint's when it was loaded at the end)."""
    best = state.best_model_checkpoint
    if args.load_best_model_at_end and best and state.global_step > 0:
        suffix = os.path.basename(os.path.normpath(best)).rsplit("-", 1)[-1]
        if suffix.isdigit():
            return int(suffix)
    return state.global_step


def write_card(output_dir: str, model, args, state, *, teacher_name: str | None, total_train_batch_size: int,
               facts: CardFacts, model_name: str | None = None, layer_plan=None,
               downstream: dict | None = None) -> None:
    """README.md and loss_terms.png of the run whose Trainer state is `state`; `downstream`: the keyword arguments of
    update_model_card but the folder, for the "Downstream evaluation" table."""
    step = weights_step(state, args)
    lead = None
    if args.load_best_model_at_end and state.best_model_checkpoint and state.global_step > 0:
        lead = (f"Evaluation metrics of the checkpoint kept at the end of training (step {step} of "
                f"{state.global_step}), chosen as the best {args.metric_for_best_model or 'loss'} on this evaluation "
                "split, so they flatter it; held-out numbers, where measured, are in the downstream table:")
    metrics = {}
    for entry in state.log_history:  # evaluations of the weights being saved only
        if entry.get("step") == step:
            metrics.update({k: v for k, v in entry.items() if k.startswith("eval_")})
    os.makedirs(output_dir, exist_ok=True)
    card = build_model_card(
        model,
        args,
        teacher_name=teacher_name,
        total_train_batch_size=total_train_batch_size,
        world_size=args.world_size,
        facts=facts,
        metrics=metrics or None,
        log_history=state.log_history,
        epochs_completed=state.epoch,
        plot_path=os.path.join(output_dir, "loss_terms.png"),
        model_name=model_name,
        layer_plan=layer_plan,
        index_metrics=downstream is None,
        metrics_lead=lead,
    )
    card.save(os.path.join(output_dir, "README.md"))
    if downstream is not None:  # the downstream table a recipe measured
        update_model_card(output_dir, **downstream)
