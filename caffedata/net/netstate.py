"""Caffe's NetState layer filtering (net.cpp, Net::Net, Net::FilterNet, Net::StateMeetsRule).

``filter_net(net, phase, stages, level)`` is what ``caffe.Net(prototxt, phase, level=, stages=)``
does: the net's own ``state`` is the base, the phase and level are overwritten, the stages are
appended to the file's; then every layer is kept or dropped by its include/exclude rules.
``filter_net_by_state`` takes a ready NetState (the solver merges its own, section 5.2).
"""
import logging

from caffedata.errors import SpecError
from caffedata.proto import NetParameter, NetState, TEST, TRAIN

log = logging.getLogger("caffedata.net")

_PHASES = {"TRAIN": TRAIN, "TEST": TEST}


def phase_value(phase):
    """Caffe's Phase number (TRAIN=0, TEST=1) from 'TRAIN'/'TEST' (any case), 0/1 or a Phase enum."""
    if isinstance(phase, str):
        key = phase.strip().upper()
        if key in _PHASES:
            return _PHASES[key]
    elif isinstance(phase, int) and not isinstance(phase, bool) and int(phase) in (TRAIN, TEST):
        return int(phase)
    raise SpecError(f"phase must be 'TRAIN' or 'TEST' (or caffedata Phase.TRAIN/TEST, 0/1), got {phase!r}")


def net_state(net_param, phase="TEST", stages=(), level=0):
    """The NetState Caffe's ``Net(file, phase, level, stages)`` runs with."""
    if isinstance(stages, str):
        stages = (stages,)
    state = NetState()
    state.CopyFrom(net_param.state)
    state.phase = phase_value(phase)
    for stage in stages:
        if not isinstance(stage, str):
            raise SpecError(f"stages must be strings, got {stage!r}")
        state.stage.append(stage)
    if isinstance(level, bool) or not isinstance(level, int):
        raise SpecError(f"level must be an int, got {level!r}")
    state.level = level
    return state


def state_meets_rule(state, rule, layer_name=""):
    """StateMeetsRule: every condition the rule sets must hold."""
    if rule.HasField("phase") and rule.phase != state.phase:
        log.debug("The NetState phase (%d) differed from the phase (%d) specified by a rule in layer %s",
                  state.phase, rule.phase, layer_name)
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        log.debug("The NetState level (%d) is above the min_level (%d) specified by a rule in layer %s",
                  state.level, rule.min_level, layer_name)
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        log.debug("The NetState level (%d) is above the max_level (%d) specified by a rule in layer %s",
                  state.level, rule.max_level, layer_name)
        return False
    for stage in rule.stage:
        if stage not in state.stage:
            log.debug("The NetState did not contain stage '%s' specified by a rule in layer %s",
                      stage, layer_name)
            return False
    for stage in rule.not_stage:
        if stage in state.stage:
            log.debug("The NetState contained a not_stage '%s' specified by a rule in layer %s",
                      stage, layer_name)
            return False
    return True


def layer_included(layer, state):
    """FilterNet's decision for one layer."""
    if len(layer.include) and len(layer.exclude):
        raise SpecError(f"layer '{layer.name}': Specify either include rules or exclude rules; not both.")
    if not len(layer.include):
        return not any(state_meets_rule(state, rule, layer.name) for rule in layer.exclude)
    return any(state_meets_rule(state, rule, layer.name) for rule in layer.include)


def filter_net_by_state(net_param, state):
    """A copy of ``net_param`` with ``state`` set and only the layers ``state`` includes."""
    out = NetParameter()
    out.CopyFrom(net_param)
    out.state.CopyFrom(state)
    del out.layer[:]
    out.layer.extend(layer for layer in net_param.layer if layer_included(layer, state))
    return out


def filter_net(net_param, phase="TEST", stages=(), level=0):
    """Layers of ``net_param`` (an upgraded V2 net) that Caffe keeps for this phase, stages and level."""
    if len(net_param.layers):
        raise SpecError("filter_net needs a V2 net (layer {...}); upgrade V1 `layers` with "
                        "caffedata.net.upgrade.load_net_param first")
    return filter_net_by_state(net_param, net_state(net_param, phase, stages, level))
