#!/usr/bin/env python3
"""torchvision's ImageNet training input pipeline, timed as bench/loader_bench.cc times
oxtrain's: ImageFolder + RandomResizedCrop(224) + RandomHorizontalFlip + ToTensor +
Normalize through a DataLoader. Prints one JSON line.

  python3 bench/torchvision_loader.py DATA/train --workers 1 --images 2000
"""
import argparse, json, resource, time
import torch, torchvision
import torchvision.transforms as T

p = argparse.ArgumentParser()
p.add_argument("data")
p.add_argument("--workers", type=int, default=1)
p.add_argument("--batch-size", type=int, default=64)
p.add_argument("--image-size", type=int, default=224)
p.add_argument("--images", type=int, default=2000)
a = p.parse_args()
torch.set_num_threads(1)
tf = T.Compose([T.RandomResizedCrop(a.image_size), T.RandomHorizontalFlip(), T.ToTensor(),
                T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
ds = torchvision.datasets.ImageFolder(a.data, tf)
dl = torch.utils.data.DataLoader(ds, batch_size=a.batch_size, shuffle=True, num_workers=a.workers,
                                 drop_last=True, persistent_workers=a.workers > 0)
done, it = 0, iter(dl)
next(it)  # warm-up batch, as the oxtrain benchmark
start = time.perf_counter()
while done < a.images:
    try:
        x, y = next(it)
    except StopIteration:
        it = iter(dl)
        continue
    done += x.shape[0]
s = time.perf_counter() - start
print(json.dumps({"framework": f"torchvision {torchvision.__version__}", "workers": a.workers,
                  "images": done, "img_s": round(done / s, 1),
                  "img_s_per_worker": round(done / s / max(a.workers, 1), 1)}), flush=True)
