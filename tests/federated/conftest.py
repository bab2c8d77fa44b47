"""Small shared pieces for the federated tests: a digits trainer and a simulation config."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from runner.data.federated import FederatedDatasetConfig
from runner.federated.backends import TrainerSpec, build_trainer
from runner.federated.config import ClientConfig, ServerConfig, SimulationConfig
from runner.federated.models import FLModelConfig


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def spec(seed: int = 0, data_kw: dict | None = None, **client) -> TrainerSpec:
    dkw = {"num_clients": 500, "samples_per_client": 20, **(data_kw or {})}
    data = OmegaConf.to_container(OmegaConf.structured(FederatedDatasetConfig(**dkw)))
    model = OmegaConf.to_container(OmegaConf.structured(FLModelConfig(hidden=[16])))
    cl = OmegaConf.to_container(OmegaConf.structured(ClientConfig(**client)))
    return TrainerSpec(data, model, cl, seed)


def sim_cfg(**kw):
    cfg = OmegaConf.structured(SimulationConfig)
    return OmegaConf.merge(cfg, kw)


def server_cfg(**kw):
    return OmegaConf.merge(OmegaConf.structured(ServerConfig), kw)


@pytest.fixture
def trainer():
    return build_trainer(spec())


@pytest.fixture
def make_spec():
    return spec


@pytest.fixture
def make_sim_cfg():
    return sim_cfg


@pytest.fixture
def make_server_cfg():
    return server_cfg
