"""Packaging for prefixrep, driven by nbdev's settings.ini (the single place for name, version and requirements)."""
from configparser import ConfigParser
from pathlib import Path

import setuptools

cfg = ConfigParser(delimiters=["="])
cfg.read(Path(__file__).parent / "settings.ini", encoding="utf-8")
cfg = cfg["DEFAULT"]
readme = Path(__file__).parent / "README.md"

setuptools.setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    long_description=readme.read_text(encoding="utf-8") if readme.exists() else "",
    long_description_content_type="text/markdown",
    author=cfg["author"],
    author_email=cfg["author_email"],
    url=cfg["git_url"],
    license="Apache-2.0",
    keywords=cfg["keywords"].split(),
    python_requires=f">={cfg['min_python']}",
    packages=setuptools.find_packages(include=["prefixrep", "prefixrep.*"]),
    include_package_data=True,
    package_data={"prefixrep": ["pretrained/*/*"]},  # the shipped prefix libraries (nbs/10_library.ipynb)
    install_requires=cfg["requirements"].split(),
    extras_require={"dev": cfg["dev_requirements"].split(), "docs": cfg["docs_requirements"].split(),
                    "cluster": cfg["cluster_requirements"].split()},  # Ray and accelerate: optional (README "Running on a GPU cluster")
    entry_points={"console_scripts": cfg["console_scripts"].split(), "nbdev": [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
    classifiers=["Programming Language :: Python :: 3", "Intended Audience :: Science/Research",
                 "Topic :: Scientific/Engineering :: Artificial Intelligence"],
    zip_safe=False,
)
