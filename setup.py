"""notifyd packaging.  ``pip install .`` installs the package, the twistd
plugin (``twisted/plugins/notifyd_plugin.py``) and the web files."""

from glob import glob

from setuptools import setup

setup(
    name="notifyd",
    version="0.1.0",
    description="Realtime notifications from RabbitMQ to browsers over WAMP v2",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    packages=["notifyd", "twisted.plugins"],
    package_data={
        "notifyd": ["py.typed"],
        "twisted.plugins": ["notifyd_plugin.py"],
    },
    # the page, notifyd.js and (after `make`) the vendored Autobahn|JS build
    data_files=[
        ("share/notifyd/web", [f for f in glob("web/*") if "." in f]),
        ("share/notifyd/web/vendor", glob("web/vendor/*.js")),
    ],
    install_requires=[
        "twisted[tls]>=24.7",
        "autobahn>=24.4",
        "txaio>=23.1",
        "pika>=1.3",
        "msgpack>=1.0",
        "cbor2>=5.4",
        "orjson>=3.9",
        "pyjwt[crypto]>=2.8",
        "prometheus-client>=0.17",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "hypothesis>=6",
            "ruff>=0.6",
            "playwright>=1.40",
            "kosoku>=0.1",
            "tornado>=6",
        ],
    },
    entry_points={
        "console_scripts": ["notifyd-publish = notifyd.publish:main"],
    },
)
