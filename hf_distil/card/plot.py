"""The loss-terms plot beside the card: each logged training loss term (and the eval loss) against the step."""

from __future__ import annotations

import os

from ..terms import card_ordered


def loss_keys() -> tuple[str, ...]:
    """The logged training losses, in the card's order: the total, then each registered term's."""
    return ("loss", *(f"{term.name}_loss" for term in card_ordered()))


def term_labels() -> dict[str, str]:
    """How the plot and the card name each logged loss."""
    return {"loss": "total", **{f"{term.name}_loss": term.label for term in card_ordered()}}


def plot_loss_terms(log_history: list[dict], path: str) -> bool:
    """Save a PNG of the logged training loss terms (and eval loss) against the step; True when written."""
    series = {
        term: [(e["step"], float(e[term])) for e in log_history if term in e and "step" in e]
        for term in loss_keys()
    }
    if not any(series.values()):
        return False
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)  # Agg without touching pyplot's global backend
    ax = fig.add_subplot()
    labels = {**term_labels(), "loss": "total (weighted)"}
    series["eval_loss"] = [(e["step"], float(e["eval_loss"])) for e in log_history if "eval_loss" in e and "step" in e]
    for term, points in series.items():
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, "o" if term == "eval_loss" else "-", label=labels.get(term, "eval total"))
    # The weighted total dwarfs the single terms: a log axis keeps all of them readable.
    if all(v > 0 for points in series.values() for _, v in points):
        ax.set_yscale("log")
    ax.set_xlabel("optimisation step")
    ax.set_ylabel("loss (terms unweighted)")
    ax.set_title("Distillation loss terms")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png")
    return True
