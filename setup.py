"""megatron-tulu: the Tülu 3 post-training recipe on megatron-core (TP/PP/DP), runnable on CPU."""

from setuptools import find_packages, setup

setup(
    name="megatron-tulu",
    version="0.1.0",
    description="Tülu 3 post-training (SFT, DPO, RLVR) for Llama 3.1 on megatron-core",
    python_requires=">=3.11",
    packages=find_packages(include=["megatron_tulu", "megatron_tulu.*", "kernels", "kernels.*"]),
    package_data={"megatron_tulu": ["recipes/*.yaml"]},
    # Dependencies are pinned in requirements/{cpu,gpu}.txt and installed by scripts/install.sh,
    # because the torch build must be chosen before anything else resolves.
    install_requires=[],
    entry_points={
        "console_scripts": [
            "mt-train=megatron_tulu.train:main",
        ]
    },
)
