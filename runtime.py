"""Where a run executes: the device, seeding and random states, and torch.distributed.

One process per device under torchrun (`torchrun --nproc_per_node=N main.py ...`): `init_distributed`
reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and starts the process group (nccl on
GPUs, gloo on CPUs); without it everything runs in one process and `world()` is (0, 1), and every
helper here is the identity. `broadcast_buffers` gives every process rank 0's batch-norm
statistics before an evaluation; `rng_states` / `restore_rng` keep each process's random state
in the checkpoint, so that a resumed run draws the same Gumbel noise on every process.
"""
import os
import random

import numpy as np
import torch
import torch.distributed as dist


def resolve_device(name, local_rank=0):
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'cpu'
    if name == 'cuda':
        if not torch.cuda.is_available():
            raise SystemExit('error: --device cuda, but torch sees no CUDA device')
        return torch.device('cuda', local_rank % torch.cuda.device_count())
    return torch.device(name)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state():
    """Python, numpy, torch (and the current CUDA device's, once CUDA is in use) random states as
    tensors and plain lists (loadable with torch.load(weights_only=True))."""
    version, state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    out = {'python': [version, list(state), gauss],
           'numpy': [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
           'torch': torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out['cuda'] = torch.cuda.get_rng_state()     # the Gumbel noise of a CUDA run comes from here
    return out


def set_rng_state(state):
    version, s, gauss = state['python']
    random.setstate((version, tuple(s), gauss))
    kind, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'])


def rng_states():
    """Every process's rng_state(), in rank order, on every process ([own] alone). Each process
    draws its own Gumbel noise (its share of the batch has its own node counts), so an exact
    resume needs each one's state."""
    if world()[1] == 1:
        return [rng_state()]
    out = [None] * world()[1]
    dist.all_gather_object(out, rng_state())
    return out


def restore_rng(state):
    """Set this process's random state from a checkpoint: its own when the checkpoint was written
    by as many processes ('rng_ranks'), rank 0's otherwise."""
    rank, size = world()
    states = state.get('rng_ranks')
    set_rng_state(states[rank] if isinstance(states, list) and len(states) == size else state['rng'])


# ----------------------------------------------------------------------------- distributed
def init_distributed(device_name):
    """Start torch.distributed when launched by torchrun; returns (rank, world size, device)."""
    if 'WORLD_SIZE' not in os.environ or int(os.environ['WORLD_SIZE']) <= 1:
        return 0, 1, resolve_device(device_name)
    local_rank = int(os.environ.get('LOCAL_RANK', 0))
    device = resolve_device(device_name, local_rank)
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
    return dist.get_rank(), dist.get_world_size(), device


def world():
    """(rank, world size) of this process."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier():
    if world()[1] > 1:
        dist.barrier()


def finish():
    """Leave the process group (at the end of a run; nothing without torch.distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_buffers(module):
    """Copy rank 0's buffers (batch-norm running statistics) to every process. DDP broadcasts
    them at the start of each forward, but each process then updates them with its own share of
    the batch; evaluation and the checkpoint must use one set, rank 0's."""
    if world()[1] == 1:
        return
    for b in module.buffers():
        dist.broadcast(b.data, src=0)


def broadcast_object(obj):
    """rank 0's value of obj on every process (identity without torch.distributed)."""
    if world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_cat(t):
    """Concatenate a tensor's rows from every process in rank order (identity alone); rows may
    differ in number between processes."""
    if world()[1] == 1:
        return t
    sizes = [None] * world()[1]
    dist.all_gather_object(sizes, (len(t), tuple(t.shape[1:])))
    width = max(s[0] for s in sizes)
    padded = torch.zeros(width, *t.shape[1:], dtype=t.dtype, device=t.device)
    padded[:len(t)] = t
    out = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(out, padded)
    return torch.cat([o[:n] for o, (n, _) in zip(out, sizes)])
