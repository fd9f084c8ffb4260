"""Check that every compression method runs on a GPU and agrees with the CPU (for a GPU machine).

    python benchmarks/device_check.py            # needs torch with CUDA; tiny-llama only, no downloads

For each method configuration: compress a tiny random Llama on the CPU and on the GPU from the same
weights and calibration tokens, then print the largest weight difference, the fraction of weights whose
pruning mask or quantization code differs, and both perplexities on fixed random windows. Fp32 reduction
order differs between devices, so GPTQ at low bits may round a few weights the other way; anything
beyond a small fraction points to a device bug.
"""
import copy
import json
import sys
import time

import torch

from calib_lib.compress import compress
from calib_lib.evaluate.perplexity import perplexity
from calib_lib.models import load_model

CONFIGS = [("magnitude", {"sparsity": 0.5}), ("wanda", {"sparsity": 0.5}), ("sparsegpt", {"sparsity": 0.5}),
           ("sparsegpt", {"n": 2, "m": 4}), ("rtn", {"bits": 3, "group_size": 32}),
           ("gptq", {"bits": 3, "group_size": 32}), ("gptq", {"bits": 4, "group_size": 32, "act_order": True}),
           ("awq", {"bits": 3, "group_size": 32})]


def main() -> int:
    if not torch.cuda.is_available():
        print("no GPU visible to torch: nothing to check")
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False          # compare fp32 with fp32
    torch.backends.cudnn.allow_tf32 = False
    model, _ = load_model("tiny-llama", log=lambda *a: None)
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    calibration = torch.randint(0, vocab, (16, 64), generator=generator)
    windows = torch.randint(0, vocab, (4, 64), generator=generator)
    print(json.dumps({"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}))
    failures = 0
    for method, params in CONFIGS:
        out = {}
        for device in ("cpu", "cuda"):
            m = copy.deepcopy(model).to(device)
            started = time.time()
            compress(m, method, calibration, progress=False, batch_size=8, **params)
            seconds = time.time() - started
            out[device] = ({k: v.detach().cpu() for k, v in m.state_dict().items()},
                           perplexity(m, windows, progress=False).perplexity, seconds)
        cpu, gpu = out["cpu"][0], out["cuda"][0]
        max_diff = max(float((cpu[k] - gpu[k]).abs().max()) for k in cpu)
        pruning = "sparsity" in params or "n" in params
        # pruning: weights whose keep/prune decision differs; quantization: weights off by more than
        # float noise (a different rounding moves a weight by a whole grid step)
        changed = sum(int(((cpu[k] == 0) != (gpu[k] == 0)).sum() if pruning
                          else ((cpu[k] - gpu[k]).abs() > 1e-4 * cpu[k].abs().max()).sum())
                      for k in cpu if k.endswith("proj.weight"))
        total = sum(cpu[k].numel() for k in cpu if k.endswith("proj.weight"))
        row = {"method": method, "params": params, "max_weight_diff": max_diff,
               "differing_fraction": changed / total, "ppl_cpu": out["cpu"][1], "ppl_gpu": out["cuda"][1],
               "seconds_cpu": round(out["cpu"][2], 2), "seconds_gpu": round(out["cuda"][2], 2)}
        ok = row["differing_fraction"] < 0.01 and abs(row["ppl_cpu"] / row["ppl_gpu"] - 1) < 0.01
        failures += not ok
        print(json.dumps({**row, "ok": ok}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
