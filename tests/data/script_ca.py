"""A tiny external CA for tests: reads a CSR PEM on stdin, prints a certificate PEM on stdout.

    python script_ca.py CA_CERT CA_KEY [MODE]

MODE (default ``good``): ``good`` signs the CSR; ``fail`` exits 3 with a message on stderr;
``garbage`` prints text that is no certificate; ``wrong-key`` signs another public key; ``two``
prints two certificates; ``wrong-subject`` changes the subject; ``slow`` sleeps 30 s first;
``ignore-stdin`` signs a fixed new key without reading stdin; ``leave-child`` starts a
``sleep 60`` that keeps stdout and stderr open (its pid written to the file named by
``FLEET_TEST_CHILD_PID``), then signs and exits; ``leave-child-slow`` starts that child, then
sleeps 30 s.
"""

import datetime
import os
import subprocess
import sys
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def sign(ca_cert, ca_key, subject, public_key):
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())


def main():
    ca_cert = x509.load_pem_x509_certificate(Path(sys.argv[1]).read_bytes())
    ca_key = serialization.load_pem_private_key(Path(sys.argv[2]).read_bytes(), password=None)
    mode = sys.argv[3] if len(sys.argv) > 3 else "good"
    if mode == "ignore-stdin":
        other = ec.generate_private_key(ec.SECP256R1()).public_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
        sys.stdout.write(sign(ca_cert, ca_key, name, other))
        return 0
    csr = x509.load_pem_x509_csr(sys.stdin.buffer.read())
    if mode.startswith("leave-child"):
        # inherits stdout and stderr, and would outlive this program
        child = subprocess.Popen(["sleep", "60"])
        Path(os.environ["FLEET_TEST_CHILD_PID"]).write_text(str(child.pid))
    if mode in ("slow", "leave-child-slow"):
        time.sleep(30)
    if mode == "fail":
        print("script CA: the CA is down", file=sys.stderr)
        return 3
    if mode == "garbage":
        print("Certificate issued! (not really)")
        return 0
    subject, key = csr.subject, csr.public_key()
    if mode == "wrong-key":
        key = ec.generate_private_key(ec.SECP256R1()).public_key()
    if mode == "wrong-subject":
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "someone else")])
    pem = sign(ca_cert, ca_key, subject, key)
    sys.stdout.write(pem + (pem if mode == "two" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
