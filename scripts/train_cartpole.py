"""Train the actor-critic of ``examples/cartpole.py`` on gymnasium's CartPole-v1 with PPO.

Writes ``examples/weights/cartpole_agent.pt`` (a state dict, ~40 KB). About a minute on 2 CPU
cores; stops once the last 20 episodes average a return of at least 475 (the maximum is 500).

    python scripts/train_cartpole.py [--seed 0] [--max-steps 300000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch.distributions import Categorical

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from cartpole import WEIGHTS, make_agent  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=300_000)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    n_envs, horizon, gamma, lam, clip = 8, 128, 0.99, 0.95, 0.2
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1") for _ in range(n_envs)])
    torch.set_num_threads(1)
    agent = make_agent()
    actor, critic = agent.module[0].module, agent.module[1].module  # plain calls: faster

    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return actor(x), critic(x)[:, 0]

    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-3)
    obs, _ = envs.reset(seed=args.seed)
    returns, running, steps, start = [], np.zeros(n_envs), 0, time.time()
    while steps < args.max_steps:
        batch = {k: [] for k in ("obs", "action", "logp", "value", "reward", "done")}
        for _ in range(horizon):
            x = torch.as_tensor(obs, dtype=torch.float32)
            with torch.no_grad():
                logits, value = forward(x)
            dist = Categorical(logits=logits)
            action = dist.sample()
            obs, reward, term, trunc, _ = envs.step(action.numpy())
            running += reward
            for i in np.flatnonzero(term | trunc):
                returns.append(running[i])
                running[i] = 0
            batch["obs"].append(x)
            batch["action"].append(action)
            batch["logp"].append(dist.log_prob(action))
            batch["value"].append(value)
            batch["reward"].append(torch.as_tensor(reward, dtype=torch.float32))
            # a time-limit truncation still bootstraps from the next state's value
            batch["done"].append(torch.as_tensor(term, dtype=torch.float32))
        steps += horizon * n_envs
        data = {k: torch.stack(v) for k, v in batch.items()}
        with torch.no_grad():
            _, next_value = forward(torch.as_tensor(obs, dtype=torch.float32))
        advantages = torch.zeros_like(data["reward"])
        gae = torch.zeros(n_envs)
        for t in reversed(range(horizon)):
            value_next = next_value if t == horizon - 1 else data["value"][t + 1]
            delta = (
                data["reward"][t] + gamma * value_next * (1 - data["done"][t]) - data["value"][t]
            )
            gae = delta + gamma * lam * (1 - data["done"][t]) * gae
            advantages[t] = gae
        targets = advantages + data["value"]
        flat = {k: v.reshape(horizon * n_envs, *v.shape[2:]) for k, v in data.items()}
        adv, ret = advantages.reshape(-1), targets.reshape(-1)
        for _ in range(4):
            for idx in torch.randperm(horizon * n_envs).split(256):
                logits, value = forward(flat["obs"][idx])
                dist = Categorical(logits=logits)
                ratio = (dist.log_prob(flat["action"][idx]) - flat["logp"][idx]).exp()
                a = (adv[idx] - adv[idx].mean()) / (adv[idx].std() + 1e-8)
                policy_loss = -torch.min(ratio * a, ratio.clamp(1 - clip, 1 + clip) * a).mean()
                value_loss = (value - ret[idx]).pow(2).mean()
                loss = policy_loss + 0.5 * value_loss - 0.01 * dist.entropy().mean()
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(agent.parameters(), 0.5)
                optimizer.step()
        recent = float(np.mean(returns[-20:])) if returns else 0.0
        print(f"steps {steps:7d}  episodes {len(returns):5d}  return(last 20) {recent:6.1f}")
        if len(returns) >= 20 and recent >= 475:
            break
    WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    torch.save(agent.state_dict(), WEIGHTS)
    print(f"saved {WEIGHTS} after {steps} steps, {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
