"""Times one pre-training step (forward, MSE, backward, SGD) of the Python
reference model, for bench/model_step_bench's same-run comparison.

  step_reference.py MODEL IMAGE_SIZE BATCH STEPS THREADS  ->  prints "seconds_per_step <s>"
"""
import os
import sys
import time

import torch

# The project's Python TransUNet (also the architecture of our BioImage.IO packages).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "trainer", "model", "python"))
from transunet import VisionTransformer  # noqa: E402


def main():
    name, size, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(int(sys.argv[5]))
    torch.manual_seed(0)
    model = VisionTransformer(name, size, 1, reconstruction=True).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.003, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, 1, size, size)
    target = torch.randn(batch, 1, size, size)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x), target)
        loss.backward()
        opt.step()

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    print(f"seconds_per_step {(time.perf_counter() - t0) / steps:.4f} threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
