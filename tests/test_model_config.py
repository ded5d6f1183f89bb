"""A checkpoint rebuilds its model from the stored model config alone (methods.ModelConfig,
checkpoint.model_state, experiment.load_model): for every method, trained with non-default
options of its own, the reloaded model has the same weights and ranks alike; a checkpoint of the
earlier format (options only) still loads, one of an unknown format is refused in one line."""
import dataclasses

import pytest
import torch

import checkpoint
import experiment
import options
from checkpoint import CheckpointError, model_state, save_checkpoint
from methods import METHODS, ModelConfig, build_model

# Every row at a size, node features and head that are not its defaults, on the light backbone
# (fast); the proposed model also on another backbone's non-default layer (mobilenet_v2's default
# is 'head', 1280 channels; stride16 has 96).
COMMON = ['--backbone', 'resnet18_light', '--image_size', '32', '--dim', '24', '--att_dim', '12', '--roi_size', '2',
          '--node_norm', 'none', '--head_init', 'pytorch', '--seq_dim', '32']
OWN = {
    'hierarchy': ['--variant', 'released', '--first_stage_dim', '8', '--separate_backbones',
                  '--backbone', 'mobilenet_v2', '--pretrained', 'none', '--feature_layer', 'stride16'],
    'hierarchy_plus': ['--node_act', 'relu', '--merge', 'weighted', '--merge_act', 'none', '--readout', 'root',
                       '--selection', 'balanced+scaled', '--level_merges', 'all', '--level_loss'],
    'localised_coattn': ['--first_stage_dim', '8'],
    'no_coattn': ['--merge', 'maxres', '--round_norm', 'l2', '--selection', 'scaled'],
    'graph_hierarchy': ['--separate_backbones'],
    'siamese': ['--separate_backbones'],
    'gated_siamese': ['--dim', '16'],
    'sketchbert': [],
    'sketchformer': ['--separate_backbones'],
    'triplet_sn': ['--dim', '20'],
    'triplet_attn_sn': [],
    'swire': ['--no-separate_backbones'],
}


def batch(args, n=3, nodes=4, points=9, seed=0):
    """The inputs of n sketches and n photos (model.batch_inputs' shape) at the options' image size."""
    g = torch.Generator().manual_seed(seed)
    s = args.image_size
    xy = torch.rand(n, nodes, 2, generator=g) * s / 2
    boxes = torch.cat([xy, xy + s / 4 + torch.rand(n, nodes, 2, generator=g) * s / 4], dim=2)
    mask = torch.arange(nodes)[None] < torch.tensor([nodes, 2, 1])[:n, None]
    pts = torch.rand(n, points, 3, generator=g)
    pts[..., 2] = (pts[..., 2] > 0.7).float()
    def side():
        return {'image': torch.rand(n, 3, s, s, generator=g), 'boxes': boxes * mask[..., None], 'mask': mask}
    return {**side(), 'points': pts, 'points_mask': torch.ones(n, points, dtype=torch.bool)}, side()


def outputs(model, sketches, photos):
    s, p = model.encode([('sketch', sketches), ('photo', photos)])
    first = model.first_stage(s) if model.has_first_stage else None
    return model.distance_matrix(s, p), first


@pytest.mark.parametrize('method', list(METHODS))
def test_every_method_reloads_from_its_stored_config_alone(method, tmp_path):
    assert set(OWN) == set(METHODS)
    args = options.parse_args('main', ['--method', method, *COMMON, *OWN[method]])
    config = ModelConfig.from_options(args)
    assert config.seq_dim == 32 and config.dim != ModelConfig.dim and config.method == method
    torch.manual_seed(0)
    model = build_model(config)
    sketches, photos = batch(args)
    model.train()
    model([('sketch', sketches), ('photo', photos)], torch.arange(3), torch.arange(3))   # batch-norm statistics
    with torch.no_grad():          # "trained": weights away from any initialisation
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model.eval()
    save_checkpoint(tmp_path / 'last.pth', args=vars(args), **model_state(model))
    # The stored options say nothing of the model here: only the stored config can rebuild it.
    stored = torch.load(tmp_path / 'last.pth', weights_only=True)
    stored['args'] = {'dataset': args.dataset}
    torch.save(stored, tmp_path / 'config_only.pth')
    for path in (tmp_path / 'last.pth', tmp_path / 'config_only.pth'):
        torch.manual_seed(1)       # another initialisation: everything must come from the file
        again, _, _, _ = experiment.load_model(path)
        assert again.config == config and type(again) is type(model)
        weights, loaded = model.state_dict(), again.state_dict()
        assert loaded.keys() == weights.keys() and all(torch.equal(v, loaded[k]) for k, v in weights.items())
    with torch.no_grad():          # the model rebuilt from the config alone ranks alike
        (d0, f0), (d1, f1) = outputs(model, sketches, photos), outputs(again, sketches, photos)
    assert torch.equal(d0, d1) and (f0 is None) == (f1 is None) and (f0 is None or torch.equal(f0, f1))


def test_a_checkpoint_of_the_first_format_loads_from_its_options(tmp_path):
    """Format 1 (options and weights, no model config): the model is rebuilt from the options."""
    args = options.parse_args('main', ['--method', 'sketchbert', *COMMON])
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_options(args)).eval()
    save_checkpoint(tmp_path / 'old.pth', args=vars(args), model=model.state_dict())
    again, _, _, _ = experiment.load_model(tmp_path / 'old.pth')
    assert again.config == model.config and again.transformer.embed.out_features == 32
    loaded = again.state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in model.state_dict().items())


def test_a_checkpoint_of_another_format_or_config_is_refused_in_one_line(tmp_path):
    args = options.parse_args('main', ['--method', 'siamese', *COMMON])
    state = model_state(build_model(ModelConfig.from_options(args)))
    cases = {'future': dict(state, format=checkpoint.FORMAT + 1),
             'extra field': dict(state, model_config={**state['model_config'], 'wings': 2}),
             'bad value': dict(state, model_config={**state['model_config'], 'variant': 'fancy'})}
    for name, bad in cases.items():
        save_checkpoint(tmp_path / f'{name}.pth', args=vars(args), **bad)
        with pytest.raises(CheckpointError) as e:
            experiment.load_model(tmp_path / f'{name}.pth')
        message = str(e.value)
        assert '\n' not in message and f'{name}.pth' in message, message
        assert ('format' in message) if name != 'bad value' else ("'fancy'" in message), message


def test_every_field_of_the_model_config_is_an_option_of_main():
    """ModelConfig.from_options reads each field from main.py's option of that name, and a typed
    option that would change one is refused on --resume (checkpoint.MODEL_FIELDS)."""
    args = options.parse_args('main', [])
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    assert names <= set(vars(args))
    assert checkpoint.MODEL_FIELDS == tuple(f.name for f in dataclasses.fields(ModelConfig))
