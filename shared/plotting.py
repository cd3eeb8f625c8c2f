"""Loss curves."""
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator


def plot_losses(epochs_seen, tokens_seen, train_losses, val_losses):
    """Train and validation loss against epochs (bottom axis) and tokens seen (top axis)."""
    fig, ax1 = plt.subplots(figsize=(6, 3.5))
    ax1.plot(epochs_seen, train_losses, label="Training loss")
    ax1.plot(epochs_seen, val_losses, linestyle="-.", label="Validation loss")
    ax1.set_xlabel("Epochs")
    ax1.set_ylabel("Loss")
    ax1.legend(loc="upper right")
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    # A second x-axis that shares the y-axis; the invisible plot aligns its ticks with the data.
    ax2 = ax1.twiny()
    ax2.plot(tokens_seen, train_losses, alpha=0)
    ax2.set_xlabel("Tokens seen")
    fig.tight_layout()
    return fig


def plot_history(history, title, log_scale=False):
    """Train and validation loss against iterations, from shared.trainer.train's history dict,
    with a dotted line at the iteration whose checkpoint was kept (best.pt)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(history["iters"], history["train_losses"], label="train")
    ax.plot(history["iters"], history["val_losses"], linestyle="-.", label="validation")
    ax.axvline(history["best_iter"], color="gray", linestyle=":",
               label=f"best.pt (iter {history['best_iter']})")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    if log_scale:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig
