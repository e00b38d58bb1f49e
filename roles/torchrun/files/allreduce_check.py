"""all_reduce across every process of a torchrun job: each rank adds rank+1; prints the sum and whether it is right."""
import os
import socket

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
t = torch.tensor([float(rank + 1)])
dist.all_reduce(t)
expected = world * (world + 1) / 2
print(f"allreduce host={socket.gethostname()} rank={rank} world={world} sum={t.item():g} "
      f"expected={expected:g} ok={t.item() == expected} iface={os.environ.get('GLOO_SOCKET_IFNAME')}", flush=True)
dist.destroy_process_group()
