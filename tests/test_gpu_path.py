"""The GPU path, checked on a CPU: bf16 / fp16 autocast on the CPU stands in for CUDA's (--amp),
a dispatch-mode counter (runtime.HostReads) for CUDA's host synchronisations, two gloo processes
for DDP under NCCL. Each test fails on the code before issue 18 and names the defect it guards."""
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torchvision.ops import roi_align

import dataset
import head as head_module
import experiment
import fast_eval
import options
import runtime
from head import build_head
from losses import TripletLoss
from methods import ModelConfig
from model import CrossModalHierarchy, RegionEncoder, pair_distance
from train import Trainer, train_step

REPO = Path(__file__).resolve().parents[1]
BF16 = dict(device_type='cpu', dtype=torch.bfloat16)


def node_sets(b, n, d, low=2, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, d, generator=g) * scale
    counts = torch.randint(low, n + 1, (b, 1), generator=g)
    mask = torch.arange(n)[None] < counts
    return x * mask[..., None], mask


class TinyConv(nn.Module):
    """A backbone with as many channels as D, so that the region projection is the identity (as
    VGG-16's 512 channels at D = 512): under autocast the nodes come out in bf16."""

    def __init__(self, dim):
        super().__init__()
        self.conv = nn.Conv2d(3, dim, 8, stride=8)

    def forward(self, x):
        return torch.relu(self.conv(x))


def tiny_model(dim=32):
    torch.manual_seed(0)
    enc = RegionEncoder(TinyConv(dim), dim, dim=dim, roi_size=2)
    assert isinstance(enc.proj, nn.Identity)
    return CrossModalHierarchy(enc, enc, build_head('paper', dim, 8))


def image_inputs(b, n=6, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(b, n, 2, generator=g) * size * 0.6
    wh = 4 + torch.rand(b, n, 2, generator=g) * size * 0.3
    counts = torch.randint(1, n + 1, (b, 1), generator=g)
    mask = torch.arange(n)[None] < counts
    boxes = torch.cat([xy, xy + wh], 2) * mask[..., None]
    return {'image': torch.randn(b, 3, size, size, generator=g), 'boxes': boxes, 'mask': mask}


# ----------------------------------------------------------------------------- 1: --amp at evaluation
def test_amp_evaluation_with_bf16_nodes_runs_the_head_in_float32():
    """Defect 1: nodes that come out of the backbone in bf16 (no projection, as VGG-16 at D = 512)
    crashed the evaluation fast path under autocast ('mat1 and mat2 must have the same dtype').
    Now the head runs in float32: the same distances as the float32 head on those nodes."""
    model = tiny_model().eval()
    with torch.no_grad(), torch.autocast(**BF16):
        s, p = model.encode([('sketch', image_inputs(5, seed=1)), ('photo', image_inputs(4, seed=2))])
        d = model.distance_matrix(s, p)
    with torch.no_grad():
        ref = model.distance_matrix({k: v.float() if v.is_floating_point() else v for k, v in s.items()},
                                    {k: v.float() if v.is_floating_point() else v for k, v in p.items()})
    assert d.dtype == torch.float32 and torch.isfinite(d).all()
    torch.testing.assert_close(d, ref, rtol=1e-5, atol=1e-6)
    # and a training step under autocast: finite loss, finite gradients on every trained parameter
    model.train()
    batch = {f'{k}_{n}' if n != 'image' else k: v for k, inp in
             (('sketch', image_inputs(4, seed=3)), ('positive', image_inputs(4, seed=4)),
              ('negative', image_inputs(4, seed=5))) for n, v in inp.items()}
    batch['photo_name'] = ['a', 'b', 'c', 'd']
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss = train_step(model, TripletLoss(0.2), batch, opt, torch.device('cpu'), amp='bf16')
    assert loss == loss and all(torch.isfinite(q).all() for q in model.parameters())


# ----------------------------------------------------------------------------- 2: bf16 boxes
def test_bf16_feature_map_pools_each_box_of_its_own_image():
    """Defect 2: the rois were cast to the map's dtype, so in bf16 the batch index of image 257
    became 256 and box coordinates in [128, 256) whole pixels: another image's (or place's)
    region. 300 images of 256 px, each map one-hot in channel (image % 16) with a ramp in x."""
    b, c, size = 300, 16, 256
    fmap = torch.zeros(b, c, 8, 8)
    fmap[torch.arange(b), torch.arange(b) % c] = torch.linspace(1, 8, 8)[None, :]   # ramp along x
    fmap = fmap.bfloat16()                              # exactly representable: 1..8

    class Fixed(nn.Module):
        def forward(self, x):
            return fmap
    enc = RegionEncoder(Fixed(), c, dim=c, roi_size=2)
    boxes = torch.tensor([[130.3, 20.0, 141.7, 60.0], [3.2, 3.2, 250.9, 250.9]]).expand(b, 2, 4).contiguous()
    mask = torch.ones(b, 2, dtype=torch.bool)
    with torch.autocast(**BF16):
        nodes = enc(torch.zeros(b, 3, size, size), boxes, mask)
    rois = torch.cat([torch.arange(b, dtype=torch.float64)[:, None, None].expand(b, 2, 1), boxes.double()], 2)
    ref = roi_align(fmap.double(), rois.view(-1, 5), 2, spatial_scale=8 / size, sampling_ratio=2,
                    aligned=True).amax((2, 3)).view(b, 2, c)
    assert nodes[:, :, :].argmax(2).eq((torch.arange(b) % c)[:, None]).all()     # its own image
    torch.testing.assert_close(nodes.double(), ref, rtol=0, atol=1e-5)          # its own place


# ----------------------------------------------------------------------------- 6: AMP numerics
@pytest.mark.parametrize('variant', ['paper', 'released'])
def test_head_under_autocast_equals_float32_head(variant):
    """Defect 6: under autocast the Gumbel noise was drawn in bf16, logits + noise added in bf16
    and the residual stream carried in bf16. The head now runs in float32 with autocast off: in
    training (same noise) and evaluation its output equals the float32 head's on the same nodes,
    and the noise it draws is float32."""
    s, s_mask = node_sets(12, 7, 32, seed=1)
    p, p_mask = node_sets(12, 9, 32, seed=2)
    s, p = s.bfloat16(), p.bfloat16()
    torch.manual_seed(0)
    head = build_head(variant, 32, 8)
    drawn = []

    def gumbel(shape, like):
        drawn.append(like.dtype)
        return head_module.sample_gumbel(shape, like)
    head.gumbel = gumbel
    for training in (True, False):
        head.train(training)
        with torch.set_grad_enabled(training):
            torch.manual_seed(5)
            with torch.autocast(**BF16):
                amp = head(s, s_mask, p, p_mask)
            torch.manual_seed(5)
            ref = head(s.float(), s_mask, p.float(), p_mask)
        for a, r in zip(amp, ref):
            assert a.dtype == torch.float32
            torch.testing.assert_close(a, r, rtol=0, atol=0)
    assert drawn and set(drawn) == {torch.float32}
    # the pair distance of two close bf16 embeddings: computed in float32, not rounded in bf16
    a = torch.randn(4, 64).bfloat16()
    b = (a.float() + 1e-3).bfloat16()
    with torch.autocast(**BF16):
        d = pair_distance(a, b)
    assert d.dtype == torch.float32
    torch.testing.assert_close(d, (a.float() - b.float()).pow(2).sum(1))


def test_fp16_autocast_compatibility_of_raw_nodes_does_not_overflow():
    """Defect 6 (fp16): the released head's compatibility X X^T of raw 512-d nodes passes 65504
    in fp16 (inf, then NaN). In float32 it is finite and equals the float32 head."""
    s, s_mask = node_sets(4, 6, 512, seed=3, scale=12.0)
    p, p_mask = node_sets(4, 6, 512, seed=4, scale=12.0)
    s, p = s.half(), p.half()
    assert (s.float() @ s.float().transpose(1, 2)).abs().max() > 65504     # fp16 would overflow
    head = build_head('released', 512, 64).eval()
    with torch.no_grad():
        with torch.autocast(device_type='cpu', dtype=torch.float16):
            amp = head(s, s_mask, p, p_mask)
        ref = head(s.float(), s_mask, p.float(), p_mask)
    for a, r in zip(amp, ref):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, r, rtol=0, atol=0)


# ----------------------------------------------------------------------------- 4: host reads
def test_training_head_plans_its_rounds_on_the_host_once():
    """Defect 4: the training loop read the device about 9 times a round (.any(), .all(),
    nonzero, int(max)). Its rounds are now planned once from the node counts: ONE host read for
    a forward and backward of 32 pairs with up to 16 nodes, whatever the counts. The operation
    count is bounded too, so that a regression shows (6339 forward, 10884 in all here)."""
    s, s_mask = node_sets(32, 16, 64, seed=1)
    p, p_mask = node_sets(32, 16, 64, low=8, seed=2)
    for method, level_merges, plan in (('hierarchy', 'one', False), ('hierarchy', 'all', False),
                                       ('hierarchy', 'one', True), ('no_coattn', 'one', False)):
        torch.manual_seed(0)
        head = build_head('paper', 64, 16, level_merges=level_merges, coattention=method != 'no_coattn').train()
        extra = {}
        if plan:        # the Explicit Hierarchy's forced merges: always the first two nodes
            extra['p_plan'] = torch.zeros(32, 15, 2, dtype=torch.long)
            extra['p_plan'][..., 1] = 1
        with runtime.HostReads() as c:
            so, po = head(s, s_mask, p, p_mask, **extra)
            forward_ops = c.ops
            pair_distance(so, po).sum().backward()
        assert c.reads == 1, (method, level_merges, plan, c.names)
        if method == 'hierarchy' and level_merges == 'one' and not plan:
            assert forward_ops < 7000 and c.ops < 12000, (forward_ops, c.ops)


def test_region_nodes_need_no_host_read():
    """Defect 4: boolean-mask indexing of the real boxes (a nonzero each) in the region encoder.
    Every box slot is pooled now and the padded ones zeroed: no host read, and the same nodes."""
    model = tiny_model()
    inputs = image_inputs(6, seed=1)
    with runtime.HostReads() as c:
        nodes = model.sketch_encoder(inputs['image'], inputs['boxes'], inputs['mask'])
    assert c.reads == 0, c.names
    mask = inputs['mask']
    assert (nodes[~mask] == 0).all()
    fmap = model.sketch_encoder.backbone(inputs['image'])
    b, n = mask.shape
    rois = torch.cat([torch.arange(b, dtype=torch.float32)[:, None, None].expand(b, n, 1), inputs['boxes']], 2)
    ref = roi_align(fmap, rois[mask], 2, spatial_scale=fmap.shape[-1] / 64, sampling_ratio=2,
                    aligned=True).amax((2, 3))
    torch.testing.assert_close(nodes[mask], ref)


def test_train_step_reads_the_host_twice():
    """A whole training step of the proposed model: the head's plan and the loss value (after the
    backward pass is queued), nothing else; a single process makes no round trip for the
    finiteness check."""
    model = tiny_model().train()
    batch = {f'{k}_{n}' if n != 'image' else k: v for k, inp in
             (('sketch', image_inputs(4, seed=3)), ('positive', image_inputs(4, seed=4)),
              ('negative', image_inputs(4, seed=5))) for n, v in inp.items()}
    batch['photo_name'] = ['a', 'b', 'c', 'd']
    # SGD: Adam reads its step counts with .item(), which are host tensors on CUDA too (no sync)
    # but look like reads on a CPU.
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    with runtime.HostReads() as c:
        train_step(model, TripletLoss(0.2), batch, opt, torch.device('cpu'))
    assert c.reads == 2, c.names


# ----------------------------------------------------------------------------- 5: evaluation chunk
def test_evaluation_pass_fits_the_device(monkeypatch):
    """Defect 5: the fast path ran 256 pairs a pass on every device (tuned for a CPU's caches:
    ~1M launches for ChairV2 on a GPU). On CUDA a pass (and a call) now holds as many pairs as
    fit in a quarter of the free memory."""
    assert fast_eval.eval_pairs(torch.device('cpu'), 16, 512) == 256
    monkeypatch.setattr(torch.cuda, 'mem_get_info', lambda device=None: (8 << 30, 16 << 30))
    n = fast_eval.eval_pairs(torch.device('cuda'), 16, 512)
    assert n >= 2048 and n * 24 * 16 * 512 * 4 <= (8 << 30) // 4
    monkeypatch.setattr(torch.cuda, 'mem_get_info', lambda device=None: (80 << 30, 80 << 30))
    assert fast_eval.eval_pairs(torch.device("cuda"), 16, 512) >= 16384      # ChairV2: 32,300 pairs in two passes


# ----------------------------------------------------------------------------- 7: the rest
def test_bf16_refused_up_front_on_a_gpu_without_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda *a, **k: 'Tesla V100-SXM2-16GB')
    why = runtime.check_amp('bf16', torch.device('cuda', 0))
    assert why and 'V100' in why and 'fp16' in why
    assert runtime.check_amp('fp16', torch.device('cpu')) and runtime.check_amp('bf16', torch.device('cpu')) is None


def test_cpu_checkpoint_resumed_on_cuda_seeds_cuda_from_its_state(monkeypatch):
    """A CPU run's checkpoint holds no CUDA state; resumed on a GPU, CUDA's generator was left at
    the seed's stream (the noise of the first steps again). Now it is seeded from the checkpoint."""
    seeds = []
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'manual_seed', seeds.append)
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        runtime.set_rng_state(runtime.rng_state())
    assert seeds[0] == seeds[1] != seeds[2]


def test_grad_scaler_state_is_checkpointed(tmp_path):
    """An fp16 resume started again from the initial loss scale (65536): the scaler's state is
    now in the checkpoint and restored."""
    args = options.parse_args('main', ['--amp', 'fp16', '--device', 'cpu'])
    model = tiny_model()
    model.config = ModelConfig.from_options(args)      # what a checkpoint stores beside the weights
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    trainer = Trainer.__new__(Trainer)
    trainer.args, trainer.model, trainer.optimizer, trainer.run_dir = args, model, opt, tmp_path
    trainer.step, trainer.best, trainer.last_metrics = 3, 0.5, None
    trainer.scaler = torch.amp.GradScaler('cpu', init_scale=1234.0)
    trainer.checkpoint('last.pth', [runtime.rng_state()])
    state = torch.load(tmp_path / 'last.pth', weights_only=True)
    other = Trainer.__new__(Trainer)
    other.args, other.model, other.optimizer = Namespace(**{**vars(args), 'resume': str(tmp_path)}), tiny_model(), \
        torch.optim.Adam(model.parameters(), lr=1e-4)
    other.scaler = torch.amp.GradScaler('cpu')
    other.restore(state)
    assert other.scaler.get_scale() == 1234.0 and other.step == 3


# ----------------------------------------------------------------------------- 3: DDP (two gloo processes)
needs_gloo = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason='torch.distributed with gloo is not available')


def torchrun(tmp_path, *args, timeout=240):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(REPO)}
    p = subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                          str(REPO / 'main.py'), *map(str, args)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, 9)
        out, _ = p.communicate()
        pytest.fail(f'torchrun ran past {timeout} s (ranks hung?):\n{out[-3000:]}')
    return p.returncode, out


COMMON = ['--image_size', '64', '--dim', '32', '--att_dim', '8', '--batch_size', '4', '--workers', '0',
          '--device', 'cpu', '--max_steps', '2', '--pretrained', 'none']


@needs_gloo
def test_ddp_explicit_hierarchy(tmp_path):
    """Defect 3: with --hierarchy explicit the photo side's compatibility gets no gradient (its
    merges are forced); DDP failed at step 2 ('Expected to have finished reduction')."""
    data = tmp_path / 'data'
    args = ['--dataset', 'SyntheticGUI', '--data_root', data, '--synthetic_size', 'screens=24',
            '--hierarchy', 'explicit', '--num_regions', '6']
    dataset.build_datasets(experiment.data_config(options.parse_args('main', [*map(str, args), *COMMON])))
    code, out = torchrun(tmp_path, *args, *COMMON, '--output_dir', tmp_path / 'runs')
    assert code == 0, out[-3000:]
    assert 'x 2 processes' in out and 'done in' in out


@needs_gloo
def test_ddp_one_node_and_an_empty_query_shard(tmp_path):
    """Defect 3 and the empty shard: at --num_regions 1 no fusion or co-attention round runs
    (their parameters get no gradient: DDP failed or hung), and one test sketch for two
    processes left rank 0 no queries (IndexError there, the other rank hung in all_gather)."""
    data = tmp_path / 'data'
    args = ['--data_root', data, '--synthetic_size', 'train_photos=4', 'test_photos=1', 'sketches_per_photo=1',
            '--num_regions', '1']
    parsed = options.parse_args('main', [*map(str, args), *COMMON])
    _, test = dataset.build_datasets(experiment.data_config(parsed))
    assert len(test.queries) == 1
    code, out = torchrun(tmp_path, *args, *COMMON, '--output_dir', tmp_path / 'runs')
    assert code == 0, out[-3000:]
    assert 'done in' in out and 'acc@1 100.00%' in out          # one photo in the gallery


# ----------------------------------------------------------------------------- the GPU check script
def test_gpu_check_script_runs_on_cpu(tmp_path):
    """benchmarks/gpu_check.sh --cpu: every section with tiny settings (bf16 autocast on the CPU),
    a resume and the checkpoint's evaluation with and without --amp; each figure it prints."""
    env = {**os.environ, 'GPU_CHECK_OUT': str(tmp_path), 'OMP_NUM_THREADS': '1'}
    p = subprocess.run(['bash', str(REPO / 'benchmarks' / 'gpu_check.sh'), '--cpu'], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    for line in ('host reads/step', 's per query (the paper: 0.67 s per query)', '% of it',
                 'resumed', 'gpu_check: all checks passed'):
        assert line in out, line
    rows = [x.split() for x in p.stdout.splitlines() if x.startswith(('resnet18_light ', 'vgg16 '))]
    assert [(r[0], r[1], r[4]) for r in rows] == [('resnet18_light', 'bf16', '2'), ('vgg16', 'bf16', '2')]
    assert p.stdout.count('test (6 sketches, 3 photos') == 2          # evaluate.py: float32 and --amp bf16
