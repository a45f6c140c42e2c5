"""nRF Cloud's public CA certificates, bundled so a plan can name them as its ``chain:``.

The certificates are the ones Nordic's nrfcloud-utils 3.3.1 writes to a device
(``nrfcloud_utils/ca_certs.py``, ``get_ca_certs``): Amazon Root CA 1 for MQTT, REST and file
downloads, and nRF Cloud's CoAP CA beside it for CoAP. They are public: only their SHA-256
fingerprints matter, and the tests hold them to the published ones.

==================  =======================================  =================================
name                certificates (in this order)             nrfcloud-utils
==================  =======================================  =================================
``nrfcloud-mqtt``   Amazon Root CA 1                         ``get_ca_certs()``
``nrfcloud-coap``   Amazon Root CA 1, nRF Cloud CoAP CA      ``get_ca_certs(coap=True)``
==================  =======================================  =================================
"""

from __future__ import annotations

from pathlib import Path

from fleet.certs.authority import Chain
from fleet.certs.pem import parse_pem_certificates

__all__ = ["AMAZON_ROOT_CA_1", "BUNDLED_CHAINS", "NRF_CLOUD_COAP_CA", "bundled_chain"]

#: Amazon Root CA 1 (CN=Amazon Root CA 1,O=Amazon,C=US; until 2038-01-17): nRF Cloud's MQTT,
#: REST and download servers. SHA-256 8E:CD:E6:88:4F:3D:87:B1:12:5B:A3:1A:C3:FC:B1:3D:70:16:DE:
#: 7F:57:CC:90:4F:E1:CB:97:C6:AE:98:19:6E.
AMAZON_ROOT_CA_1 = """\
-----BEGIN CERTIFICATE-----
MIIDQTCCAimgAwIBAgITBmyfz5m/jAo54vB4ikPmljZbyjANBgkqhkiG9w0BAQsF
ADA5MQswCQYDVQQGEwJVUzEPMA0GA1UEChMGQW1hem9uMRkwFwYDVQQDExBBbWF6
b24gUm9vdCBDQSAxMB4XDTE1MDUyNjAwMDAwMFoXDTM4MDExNzAwMDAwMFowOTEL
MAkGA1UEBhMCVVMxDzANBgNVBAoTBkFtYXpvbjEZMBcGA1UEAxMQQW1hem9uIFJv
b3QgQ0EgMTCCASIwDQYJKoZIhvcNAQEBBQADggEPADCCAQoCggEBALJ4gHHKeNXj
ca9HgFB0fW7Y14h29Jlo91ghYPl0hAEvrAIthtOgQ3pOsqTQNroBvo3bSMgHFzZM
9O6II8c+6zf1tRn4SWiw3te5djgdYZ6k/oI2peVKVuRF4fn9tBb6dNqcmzU5L/qw
IFAGbHrQgLKm+a/sRxmPUDgH3KKHOVj4utWp+UhnMJbulHheb4mjUcAwhmahRWa6
VOujw5H5SNz/0egwLX0tdHA114gk957EWW67c4cX8jJGKLhD+rcdqsq08p8kDi1L
93FcXmn/6pUCyziKrlA4b9v7LWIbxcceVOF34GfID5yHI9Y/QCB/IIDEgEw+OyQm
jgSubJrIqg0CAwEAAaNCMEAwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8BAf8EBAMC
AYYwHQYDVR0OBBYEFIQYzIU07LwMlJQuCFmcx7IQTgoIMA0GCSqGSIb3DQEBCwUA
A4IBAQCY8jdaQZChGsV2USggNiMOruYou6r4lK5IpDB/G/wkjUu0yKGX9rbxenDI
U5PMCCjjmCXPI6T53iHTfIUJrU6adTrCC2qJeHZERxhlbI1Bjjt/msv0tadQ1wUs
N+gDS63pYaACbvXy8MWy7Vu33PqUXHeeE6V/Uq2V8viTO96LXFvKWlJbYK8U90vv
o/ufQJVtMVT8QtPHRh8jrdkPSHCa2XV4cdFyQzR1bldZwgJcJmApzyMZFo6IQ6XU
5MsI+yMRQ+hDKXJioaldXgjUkK642M4UwtBV8ob2xJNDd2ZhwLnoQdeXeGADbkpy
rqXRfboQnoZsG4q5WTP468SQvvG5
-----END CERTIFICATE-----
"""

#: nRF Cloud's CoAP CA (CN=nRF Cloud; until 2048-12-30; coap.nrfcloud.com). SHA-256
#: 40:47:1D:DD:6E:21:BA:63:BA:94:C6:F3:A6:DF:59:C8:33:B5:1B:2E:63:BB:72:17:F5:52:9B:D7:13:43:5F:52.
NRF_CLOUD_COAP_CA = """\
-----BEGIN CERTIFICATE-----
MIIBjzCCATagAwIBAgIUOEakGUS/7BfSlprkly7UK43ZAwowCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJblJGIENsb3VkMB4XDTIzMDUyNDEyMzUzMloXDTQ4MTIzMDEy
MzUzMlowFDESMBAGA1UEAwwJblJGIENsb3VkMFkwEwYHKoZIzj0CAQYIKoZIzj0D
AQcDQgAEPVmJXT4TA1ljMcbPH0hxlzMDiPX73FHsdGM/6mqAwq9m2Nunr5/gTQQF
MBUZJaQ/rUycLmrT8i+NZ0f/OzoFsKNmMGQwHQYDVR0OBBYEFGusC7QaV825v0Ci
qEv2m1HhiScSMB8GA1UdIwQYMBaAFGusC7QaV825v0CiqEv2m1HhiScSMBIGA1Ud
EwEB/wQIMAYBAf8CAQAwDgYDVR0PAQH/BAQDAgGGMAoGCCqGSM49BAMCA0cAMEQC
IH/C3yf5aNFSFlm44CoP5P8L9aW/5woNrzN/kU5I+H38AiAwiHYlPclp25LgY8e2
n7e2W/H1LXJ7S3ENDBwKUF4qyw==
-----END CERTIFICATE-----
"""

#: ``chain:`` name -> its PEM certificates.
BUNDLED_CHAINS = {
    "nrfcloud-mqtt": AMAZON_ROOT_CA_1,
    "nrfcloud-coap": AMAZON_ROOT_CA_1 + NRF_CLOUD_COAP_CA,
}


def bundled_chain(name: str) -> Chain:
    """The bundled chain ``name`` (a key of :data:`BUNDLED_CHAINS`)."""
    return Chain(path=Path(name), certificates=tuple(parse_pem_certificates(
        BUNDLED_CHAINS[name], f"bundled chain {name}")))
