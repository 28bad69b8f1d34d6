#!/usr/bin/env python3
"""RabbitMQ side of the shipping test, with pika (independent of Gannet's own AMQP client).

Usage: amqp_client.py PORT setup       declare exchange `gannet` (topic, durable), queue
                                        `events` (durable) bound with `gannet.#`
       amqp_client.py PORT count       print how many messages wait in `events`
       amqp_client.py PORT drain       print every waiting message as a JSON line
                                        {"routing_key", "message_id", "type", "delivery_mode",
                                         "event"} and acknowledge them
"""
import json
import sys

import pika

port = int(sys.argv[1])
mode = sys.argv[2]
conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
ch = conn.channel()
if mode == "setup":
    ch.exchange_declare("gannet", "topic", durable=True)
    ch.queue_declare("events", durable=True)
    ch.queue_bind("events", "gannet", "gannet.#")
elif mode == "count":
    q = ch.queue_declare("events", durable=True, passive=True)
    print(q.method.message_count)
elif mode == "drain":
    while True:
        method, props, body = ch.basic_get("events", auto_ack=True)
        if method is None:
            break
        print(json.dumps({
            "routing_key": method.routing_key,
            "message_id": props.message_id,
            "type": props.type,
            "delivery_mode": props.delivery_mode,
            "event": json.loads(body),
        }))
conn.close()
