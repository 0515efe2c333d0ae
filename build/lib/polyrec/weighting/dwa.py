"""Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019), one backward pass.

w_i = T·softmax(r_i / τ) with r_i = L_i(k-1) / L_i(k-2), the ratio of task i's mean loss
over the last two windows. The paper's window is an epoch; the interface sees steps, so
the window is ``window`` steps (about half an epoch of MovieLens-100K at batch 1024).
Equal weights until two windows are complete.
"""
import torch
from pydantic import PositiveInt

from polyrec.weighting.base import Positive, Weighting


class DWA(Weighting):
    def __init__(self, tasks, temperature: Positive = 2.0, window: PositiveInt = 200):
        super().__init__(tasks)
        self.temperature, self.window = temperature, window
        self.register_buffer("running", torch.zeros(len(tasks)))
        self.register_buffer("previous", torch.zeros(2, len(tasks)))  # mean losses of windows k-2, k-1
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("weights", torch.ones(len(tasks)))

    def backward(self, losses, shared, model):
        used = self.priority * self.weights
        (used * losses).sum().backward()
        self.running += losses.detach()
        self.steps += 1
        if self.steps % self.window == 0:
            self.previous = torch.stack([self.previous[1], self.running / self.window])
            self.running.zero_()
            if self.steps >= 2 * self.window:
                ratio = self.previous[1] / self.previous[0].clamp(min=1e-12)
                self.weights = len(losses) * torch.softmax(ratio / self.temperature, 0)
        return used
