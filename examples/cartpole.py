"""CartPole: explain, probe and steer a PPO actor-critic written with tensordict.nn.

The agent is a ``TensorDictSequential`` of an actor (``observation -> ("actor", "logits")``)
and a critic (``observation -> "state_value"``), trained by ``scripts/train_cartpole.py``.
"""

from __future__ import annotations

from pathlib import Path

from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn

WEIGHTS = Path(__file__).resolve().parent / "weights" / "cartpole_agent.pt"


def make_agent() -> TensorDictSequential:
    """The actor-critic, randomly initialised."""
    actor = nn.Sequential(
        nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2)
    )
    critic = nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 1))
    return TensorDictSequential(
        TensorDictModule(actor, in_keys=["observation"], out_keys=[("actor", "logits")]),
        TensorDictModule(critic, in_keys=["observation"], out_keys=["state_value"]),
    )


# -- everything below runs the example -------------------------------------------------------
import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from _report import write_report  # noqa: E402
from tensordict import TensorDict  # noqa: E402

import tdlens  # noqa: E402
from tdlens import latent  # noqa: E402

FEATURES = ["cart position", "cart velocity", "pole angle", "pole angular velocity"]
ACTOR_HIDDEN = "module.0.module.3"  # the actor's second tanh layer
CRITIC_HIDDEN = "module.1.module.1"  # the critic's tanh layer


def load_agent() -> TensorDictSequential:
    agent = make_agent()
    agent.load_state_dict(torch.load(WEIGHTS, weights_only=True))
    return agent.eval()


def play(agent: nn.Module, seeds: list[int], *, max_steps: int, epsilon: float = 0.0) -> tuple:
    """Greedy episodes (``epsilon``: share of random actions). Returns each episode's return
    and a TensorDict ``[T]`` of the states visited, the actions taken and the episode index."""
    import gymnasium as gym

    env = gym.make("CartPole-v1", max_episode_steps=max_steps)
    rng = torch.Generator().manual_seed(12345)
    returns, observations, actions, episodes = [], [], [], []
    for index, seed in enumerate(seeds):
        obs, _ = env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            x = torch.as_tensor(obs, dtype=torch.float32)[None]
            with torch.no_grad():
                logits = agent(TensorDict({"observation": x}, [1]))["actor", "logits"]
            action = int(logits.argmax(-1))
            if epsilon and float(torch.rand((), generator=rng)) < epsilon:
                action = int(torch.randint(0, 2, (), generator=rng))
            observations.append(x[0])
            actions.append(action)
            episodes.append(index)
            obs, reward, term, trunc, _ = env.step(action)
            total += float(reward)
            done = term or trunc
        returns.append(total)
    steps = TensorDict(
        {
            "observation": torch.stack(observations),
            "action": torch.tensor(actions),
            "episode": torch.tensor(episodes),
        },
        batch_size=[len(actions)],
    )
    return returns, steps


def taken_action_log_prob(logits: torch.Tensor, steps: TensorDict) -> torch.Tensor:
    """The log-probability of the action the agent took at each row's step."""
    return torch.log_softmax(logits, -1).gather(-1, steps["action"][:, None])[:, 0]


def explain(agent: nn.Module, episode: TensorDict, n_steps: int) -> dict:
    """Action log-prob and value attributed to the four observations, in one IG call."""
    ig = tdlens.IntegratedGradients(agent)
    attr, delta = ig.attribute(
        episode,
        targets=[
            tdlens.Target(taken_action_log_prob, output=("actor", "logits")),
            tdlens.Target(0, output="state_value"),
        ],
        n_steps=n_steps,
        return_convergence_delta=True,
    )
    per_step = attr["observation"]  # [T, 2, 4]
    share = per_step.abs().mean(0) / per_step.abs().mean(0).sum(-1, keepdim=True)
    return {"attributions": per_step, "delta": float(delta.abs().max()), "share": share}


def probe_pole_angle(agent: nn.Module, states: TensorDict, *, seed: int = 0) -> dict:
    """Ridge probe of the critic's hidden layer for the pole angle, held-out R^2, against the
    same probe on shuffled labels (chance) and on the raw cart position (a weak baseline)."""
    acts = latent.cache(agent, states.select("observation"), paths=CRITIC_HIDDEN)
    hidden = acts.get(CRITIC_HIDDEN).double()
    angle = states["observation"][:, 2].double()
    order = torch.randperm(len(angle), generator=torch.Generator().manual_seed(seed))
    train, test = order[: len(order) // 2], order[len(order) // 2 :]

    def r2(x: torch.Tensor, y: torch.Tensor) -> float:
        design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
        a = design[train]
        w = torch.linalg.solve(
            a.T @ a + 1e-3 * torch.eye(a.shape[1], dtype=x.dtype), a.T @ y[train]
        )
        residual = y[test] - design[test] @ w
        return float(1 - residual.pow(2).sum() / (y[test] - y[test].mean()).pow(2).sum())

    shuffled = angle[torch.randperm(len(angle), generator=torch.Generator().manual_seed(seed + 1))]
    return {"r2": r2(hidden, angle), "r2_shuffled": r2(hidden, shuffled)}


def steer_right(agent: nn.Module, states: TensorDict, seeds: list[int], *, max_steps: int) -> dict:
    """A steering vector at the actor's hidden layer, from the states where the agent pushes
    right minus those where it pushes left; the returns with it added against without."""
    right = states["action"] == 1
    # latent.steering_vector reads sequence activations [B, T, D]; these are [B, D]
    acts = latent.cache(agent, states.select("observation"), paths=ACTOR_HIDDEN)
    hidden = acts.get(ACTOR_HIDDEN)
    vector = hidden[right].mean(0) - hidden[~right].mean(0)
    before, _ = play(agent, seeds, max_steps=max_steps)
    with latent.steer(agent, {ACTOR_HIDDEN: vector}, scale=3.0):
        after, steered = play(agent, seeds, max_steps=max_steps)
    return {
        "return_before": sum(before) / len(before),
        "return_after": sum(after) / len(after),
        "right_share_after": float(steered["action"].float().mean()),
    }


def figures(out: Path, explained: dict, episode: TensorDict) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attributions = explained["attributions"]
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    for i, name in enumerate(FEATURES):
        axes[0].plot(episode["observation"][:, i].numpy(), label=name)
        axes[1].plot(attributions[:, 0, i].numpy(), label=name)
        axes[2].plot(attributions[:, 1, i].numpy(), label=name)
    axes[0].set_ylabel("observation")
    axes[1].set_ylabel("IG: log p(action)")
    axes[2].set_ylabel("IG: state value")
    axes[2].set_xlabel("time step")
    axes[0].legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path = out / "cartpole_attributions.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fast", action="store_true", help="short episodes, few steps")
    parser.add_argument("--out", type=Path, default=Path("cartpole_out"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    max_steps, n_steps, n_episodes = (200, 16, 3) if args.fast else (500, 64, 10)
    agent = load_agent()
    _, states = play(agent, list(range(n_episodes)), max_steps=max_steps, epsilon=0.3)
    episode_returns, episode = play(agent, [100], max_steps=max_steps)
    explained = explain(agent, episode.exclude("episode"), n_steps)
    share = explained["share"]
    numbers = {
        "episode return (greedy)": episode_returns[0],
        "IG completeness gap (max)": explained["delta"],
        **{f"action share {f}": float(share[0, i]) for i, f in enumerate(FEATURES)},
        **{f"value share {f}": float(share[1, i]) for i, f in enumerate(FEATURES)},
    }
    probe = probe_pole_angle(agent, states)
    numbers["probe R2 pole angle (critic hidden)"] = probe["r2"]
    numbers["probe R2 shuffled labels (chance)"] = probe["r2_shuffled"]
    steer = steer_right(agent, states, list(range(200, 200 + n_episodes)), max_steps=max_steps)
    numbers.update({k.replace("_", " "): v for k, v in steer.items()})
    images = figures(args.out, explained, episode)
    numbers["report"] = str(
        write_report(args.out / "cartpole_report.html", "CartPole actor-critic", numbers, images)
    )
    numbers["seconds"] = round(time.time() - start, 1)
    print(json.dumps(numbers, indent=1))
    # the headline numbers
    assert probe["r2"] > probe["r2_shuffled"] + 0.5, probe
    assert abs(steer["return_after"] - steer["return_before"]) > 0.5 * steer["return_before"], steer
    return numbers


if __name__ == "__main__":
    main()
