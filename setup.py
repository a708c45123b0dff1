"""dualopt_mm: DualOpt / OLOR optimizers for MMDetection, MMSegmentation and MMPretrain."""
import os.path as osp

from setuptools import find_packages, setup

HERE = osp.dirname(osp.abspath(__file__))


def read_version() -> str:
    namespace: dict = {}
    with open(osp.join(HERE, 'dualopt_mm', 'version.py')) as f:
        exec(f.read(), namespace)
    return namespace['__version__']


def read_readme() -> str:
    with open(osp.join(HERE, 'README.md'), encoding='utf-8') as f:
        return f.read()


setup(
    name='dualopt_mm',
    version=read_version(),
    description='DualOpt / OLOR weight-rollback optimizers for OpenMMLab '
    '(MMDetection, MMSegmentation, MMPretrain)',
    long_description=read_readme(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.9',
    packages=find_packages(include=['dualopt_mm', 'dualopt_mm.*']),
    # configs/ and tools/ ship inside the package as dualopt_mm/.mim/{configs,tools}
    # (symlinks in the source tree, real files in a wheel) so `mim train dualopt_mm CFG`
    # finds them in editable and regular installs alike.
    package_data={
        'dualopt_mm': [
            '.mim/configs/**/*.py',
            '.mim/tools/*.py',
            '.mim/tools/*.sh',
            '.mim/tools/**/*.py',
        ]
    },
    include_package_data=True,
    zip_safe=False,
    install_requires=[
        'torch>=2.0',
        'mmengine>=0.10.4,<1.0.0',
        'numpy',
        'tqdm',
    ],
    extras_require={
        # mmcv needs compiled ops: see README "Installation" (tools/setup/setup_env.sh on CPU).
        'mm': [
            'mmcv>=2.0.0rc4,<2.2.0',
            'mmdet>=3.0.0,<3.4.0',
            'mmsegmentation>=1.0.0,<1.3.0',
            'mmpretrain>=1.0.0,<1.3.0',
            'openmim>=0.3.7',
            'pycocotools',
            'ftfy',
            'regex',
        ],
        # FlexibleRunner + DeepSpeedStrategy: mmengine 0.10.7 imports a module deepspeed 0.19.7
        # removed; 0.19.6 is the tested release
        'deepspeed': ['deepspeed==0.19.6'],
        'tests': ['pytest', 'pytest-timeout', 'scikit-learn', 'matplotlib', 'ruff'],
    },
    classifiers=[
        'Programming Language :: Python :: 3',
        'License :: OSI Approved :: Apache Software License',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
