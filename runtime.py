"""Where a run executes: the device, seeding and random states, and torch.distributed.

One process per device under torchrun (`torchrun --nproc_per_node=N main.py ...`): `init_distributed`
reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and starts the process group (nccl on
GPUs, gloo on CPUs); without it everything runs in one process and `world()` is (0, 1), and every
helper here is the identity. `broadcast_buffers` gives every process rank 0's batch-norm
statistics before an evaluation; `rng_states` / `restore_rng` keep each process's random state
in the checkpoint, so that a resumed run draws the same Gumbel noise on every process.
`autocast` / `check_amp` are --amp's; `HostReads` counts the operations that make the host wait
for a GPU (on any device), so that a CPU test sees a regression of the GPU path.
"""
import contextlib
import os
import random

import numpy as np
import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode


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
    if torch.cuda.is_available():
        if 'cuda' in state:
            torch.cuda.set_rng_state(state['cuda'])
        else:
            # A checkpoint of a CPU run: seed CUDA's generator from the restored CPU state, so the
            # resumed run does not replay the Gumbel noise of its first steps (the seed's stream).
            g = torch.Generator().set_state(state['torch'])
            torch.cuda.manual_seed(int(torch.randint(2 ** 62, (1,), generator=g)))


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


def tune_cuda(device, tf32=False):
    """On CUDA: cuDNN picks its fastest convolution for the (fixed) image size; with tf32,
    float32 matrix products and convolutions use TensorFloat-32. Nothing on other devices."""
    if device.type != 'cuda':
        return
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(tf32)


def autocast(device, amp):
    """Mixed precision (--amp bf16 | fp16) on the device: CUDA, or a CPU for bf16 (the checks of
    the GPU path run there); nothing otherwise. The pairwise head always runs in float32
    (head.PairHead.forward)."""
    if amp == 'none' or (device.type != 'cuda' and amp != 'bf16'):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == 'bf16' else torch.float16)


def check_amp(amp, device):
    """An --amp the device cannot run, as one line (None when it can)."""
    if amp == 'fp16' and device.type != 'cuda':
        return f'--amp fp16 needs a CUDA device (running on {device}; --amp bf16 runs on a CPU)'
    if amp == 'bf16' and device.type == 'cuda' and not torch.cuda.is_bf16_supported():
        return (f'--amp bf16: {torch.cuda.get_device_name(device)} has no bfloat16 support '
                f'(use --amp fp16 or none)')
    if amp != 'none' and device.type not in ('cuda', 'cpu'):
        return f'--amp {amp} needs a CUDA device or a CPU (running on {device})'
    return None


# ----------------------------------------------------------------------------- distributed
def init_distributed(device_name):
    """Start torch.distributed when launched by torchrun; returns (rank, world size, device)."""
    env = {k: os.environ.get(k, d) for k, d in (('WORLD_SIZE', '1'), ('RANK', '0'), ('LOCAL_RANK', '0'))}
    bad = [f'{k}={v!r}' for k, v in env.items() if not v.strip().isdigit()]
    if bad:
        raise SystemExit(f'error: {", ".join(bad)} in the environment: expected an integer >= 0 (torchrun sets '
                         f'these; unset them to run in one process)')
    if int(env['WORLD_SIZE']) <= 1:
        return 0, 1, resolve_device(device_name)
    lacking = [k for k in ('MASTER_ADDR', 'MASTER_PORT') if not os.environ.get(k)]
    if lacking:
        raise SystemExit(f'error: WORLD_SIZE={env["WORLD_SIZE"]} but {" and ".join(lacking)} not set: start '
                         f'several processes with torchrun (or unset WORLD_SIZE to run in one)')
    local_rank = int(env['LOCAL_RANK'])
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


# ----------------------------------------------------------------------------- host reads
class HostReads(TorchDispatchMode):
    """Counts the operations that make the host wait for the device (on CUDA, a synchronisation
    each): reading a value (.item(), bool(), int(), .tolist()), nonzero, boolean-mask indexing,
    copies to the CPU. On a CPU nothing waits, but the count is the same, so a test there shows
    a regression of the GPU path. Also counts every operation (ops). Use as a context manager."""

    READS = {'aten._local_scalar_dense', 'aten.nonzero', 'aten.masked_select', 'aten.unique',
             'aten._unique2', 'aten.unique_consecutive', 'aten.is_nonzero'}

    def __init__(self, cuda_only=False):
        """cuda_only: count only reads of CUDA tensors (on a GPU: Adam's step counts, say, are
        host tensors whose .item() waits for nothing)."""
        super().__init__()
        self.cuda_only, self.paused = cuda_only, False
        self.reads, self.ops, self.names = 0, 0, []

    def __enter__(self):
        self._tolist = torch.Tensor.tolist
        counter = self

        def tolist(t):        # on a CPU tensor no operation runs; on CUDA it is a copy to the host
            if t.device.type != 'cuda' and not counter.cuda_only:
                counter._count('tolist')
            return counter._tolist(t)
        torch.Tensor.tolist = tolist
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)

    def _count(self, name):
        if not self.paused:
            self.reads += 1
            self.names.append(name)

    @contextlib.contextmanager
    def pause(self):
        """Reads inside are not counted (e.g. Adam's step counts: host tensors on CUDA too)."""
        self.paused = True
        try:
            yield
        finally:
            self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func.overloadpacket)
        self.ops += 1
        on_cuda = any(torch.is_tensor(a) and a.device.type == 'cuda' for a in args)
        if self.cuda_only and not on_cuda and name != 'aten._to_copy' and name != 'aten.copy_':
            pass
        elif name in self.READS:
            self._count(name)
        elif name in ('aten.index', 'aten.index_put', 'aten.index_put_', 'aten._index_put_impl_'):
            indices = args[1] if len(args) > 1 else kwargs.get('indices', ())
            if any(i is not None and i.dtype == torch.bool for i in indices):
                self._count(f'{name} (boolean mask)')
        elif name in ('aten._to_copy', 'aten.copy_', 'aten.to'):
            src = args[1] if name == 'aten.copy_' else args[0]
            dst = args[0].device if name == 'aten.copy_' else kwargs.get('device')
            if torch.is_tensor(src) and src.device.type == 'cuda' and dst is not None \
                    and torch.device(dst).type == 'cpu':
                self._count(f'{name} (to the CPU)')
        return func(*args, **kwargs)
