#!/usr/bin/env python3
"""Writes the benchmark batch: benches/data/inject_template.json plus N recipients, each with
its own name, last order, points and four recommended products (deterministic).

    make_inject_batch.py N DOMAIN > batch.json
"""
import json
import os
import sys

n, domain = int(sys.argv[1]), sys.argv[2]
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "inject_template.json")) as f:
    batch = json.load(f)
recipients = []
for i in range(n):
    products = [
        {
            "sku": f"SKU{(i * 7 + k) % 5000:05d}",
            "name": f"Product {(i * 7 + k) % 5000} <{['Blue', 'Red', 'Green', 'Black'][k]}>",
            "price": 9.99 + ((i + k * 13) % 200),
            "discount": [0, 10, 15, 25][(i + k) % 4],
            "url": f"https://shop.sender.test/p/{(i * 7 + k) % 5000}",
            "blurb": "Hand-picked for you & made to last: a customer favourite this season.",
        }
        for k in range(4)
    ]
    recipients.append(
        {
            "email": f"user{i}@{domain}",
            "name": f"Customer Nümber {i}",
            "substitutions": {
                "first_name": f"Name{i}",
                "last_order": f"order #{100000 + i}",
                "points": (i * 37) % 1000,
                "segment": f"s{i % 8}",
                "products": products,
            },
            "metadata": {"crm_id": i},
        }
    )
batch["recipients"] = recipients
json.dump(batch, sys.stdout, ensure_ascii=False)
