#!/usr/bin/env python3
"""PyTorch's ResNet training step, the baseline oxtrain's benchmarks run beside their own.

One torchvision ResNet trained on one fixed random batch (no data loading): SGD with momentum
0.9 and weight decay 1e-4, CrossEntropyLoss, and loss.item() every step, which synchronises as
examples/imagenet/main.py's logging does. One JSON line per configuration on stdout.

  bench/torch_resnet.py                                  # GPU: the four configurations, batch 128
  bench/torch_resnet.py --config strict_fp32_nchw
  bench/torch_resnet.py --cpu --arch resnet18 --image-size 112 --batch-size 32
"""
import argparse
import json
import time

import torch
import torchvision

# name: (autocast dtype or None, channels-last memory format, TF32 allowed)
CONFIGS = {
    "fp32_nchw": (None, False, True),  # PyTorch's defaults: cuDNN convolutions in TF32
    "strict_fp32_nchw": (None, False, False),
    "tf32_nhwc": (None, True, True),
    "amp_fp16_nhwc": (torch.float16, True, True),
    "amp_bf16_nhwc": (torch.bfloat16, True, True),
}


def measure(config, args, device):
    autocast_dtype, channels_last, tf32 = CONFIGS[config]
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = getattr(torchvision.models, args.arch)().to(device, memory_format=layout)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    criterion = torch.nn.CrossEntropyLoss()
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    images = images.to(memory_format=layout)
    labels = torch.randint(0, 1000, (args.batch_size,), device=device)
    use_scaler = autocast_dtype == torch.float16 and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)

    def train_step():
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            loss = criterion(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.item()

    for _ in range(args.warmup):
        train_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    begin = time.perf_counter()
    for _ in range(args.iters):
        train_step()
    elapsed = time.perf_counter() - begin
    on_gpu = device.type == "cuda"
    return {
        "framework": "pytorch " + torch.__version__,
        "device": torch.cuda.get_device_name() if on_gpu else "cpu",
        "arch": args.arch,
        "config": config,
        "image_size": args.image_size,
        "batch": args.batch_size,
        "threads": torch.get_num_threads(),
        "img_s": round(args.batch_size * args.iters / elapsed, 1),
        "ms_step": round(1000 * elapsed / args.iters, 2),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if on_gpu else None,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", choices=sorted(CONFIGS),
                        help="configuration to time (repeatable; default: all GPU ones, or fp32 on a CPU)")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=15)
    parser.add_argument("--cpu", action="store_true", help="time on the CPU (fp32 only)")
    args = parser.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        # A GPU run that quietly fell back to the CPU would take minutes and compare nothing.
        raise SystemExit("torch_resnet.py: PyTorch sees no GPU (torch.cuda.is_available() is False); "
                         "give --cpu to time on the CPU")
    device = torch.device("cpu" if args.cpu else "cuda")
    if device.type == "cuda":
        configs = args.config or ["fp32_nchw", "tf32_nhwc", "amp_fp16_nhwc", "amp_bf16_nhwc"]
    else:
        configs = args.config or ["fp32_nchw"]
    for config in configs:
        print(json.dumps(measure(config, args, device)), flush=True)


if __name__ == "__main__":
    main()
