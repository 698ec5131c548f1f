"""Real Kafka clients driven by tests/kafka.rs against the real broker.

Every mode prints one JSON object per line on stdout (flushed), so the Rust
side can follow what a long-running client does. Modes:

  confluent-produce BOOTSTRAP TOPIC FIRST COUNT
      acks=all producer with delivery reports; prints {"delivered": n}
  confluent-consume BOOTSTRAP TOPIC GROUP IDLE_SECONDS
      a group member committing each message synchronously, then printing
      {"value": ..., "partition": p, "offset": o}; exits after IDLE_SECONDS
      with nothing new, printing {"assigned": [...]} on each assignment
  kafka-python BOOTSTRAP TOPIC COUNT
      produce COUNT messages, read them back with a group consumer and
      commit; prints {"produced": n, "consumed": m, "distinct": d}
  debug-features BOOTSTRAP TOPIC
      a producer and a group consumer with debug=feature,protocol; the
      librdkafka log goes to stderr for the test to check
  confluent-compressed BOOTSTRAP TOPIC CODEC COUNT
      idempotent acks=all producer with compression.type=CODEC sending COUNT values to
      partition 0, then a consumer reading partition 0 from the start;
      prints {"delivered": n, "failed": [...], "values": [...]}
  confluent-admin BOOTSTRAP TOPIC
      AdminClient: create TOPIC with configs (and a topic with an unknown
      config), describe, incrementally alter, produce ten records with
      timestamp 1000 to partition 0, delete the records below 5, read back;
      prints one report of everything seen
  confluent-ssl BOOTSTRAP TOPIC CA_FILE
      security.protocol=SSL trusting CA_FILE: an acks=all producer sends
      100 values to partition 0, a consumer reads them back; prints
      {"delivered": n, "values": [...]}
  confluent-sasl BOOTSTRAP TOPIC CA_FILE MECHANISM USER PASSWORD
      security.protocol=SASL_SSL with MECHANISM: an acks=all producer sends
      50 values to partition 0, a consumer reads them back; prints
      {"delivered": n, "values": [...], "errors": [...]} (errors: what the
      client reported, e.g. a failed login)
  confluent-acl BOOTSTRAP MECHANISM USER PASSWORD TOPIC GROUP
      SASL_PLAINTEXT as USER: list the topics, produce 10 values to TOPIC,
      consume them in GROUP; prints {"topics": [...], "delivered": n,
      "produce_errors": [...], "consumed": m, "consume_errors": [...]}
  confluent-quota BOOTSTRAP MECHANISM USER PASSWORD TOPIC BYTES
      SASL_PLAINTEXT as USER: produce BYTES in 10 KB values to partition 0
      with a throttle callback; prints {"delivered": n, "throttled_ms": max}
  kafka-python-admin BOOTSTRAP TOPIC
      KafkaAdminClient on an existing TOPIC: alter_configs, describe_configs,
      delete_records of partition 0 to the end; prints a report
"""

import json
import sys
import time


def emit(obj):
    print(json.dumps(obj), flush=True)


def poll_messages(consumer, count, seconds):
    """Up to `count` messages from an assigned consumer, giving up after
    `seconds`."""
    messages = []
    deadline = time.time() + seconds
    while len(messages) < count and time.time() < deadline:
        message = consumer.poll(0.2)
        if message is not None and not message.error():
            messages.append(message)
    return messages


def confluent_produce(bootstrap, topic, first, count):
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    delivered = []
    failed = []

    def report(error, message):
        if error is not None:
            failed.append(str(error))
        else:
            delivered.append((message.partition(), message.offset()))

    for i in range(first, first + count):
        producer.produce(topic, key=f"k{i}", value=f"v{i}", on_delivery=report)
        producer.poll(0)
    remaining = producer.flush(30)
    emit({"delivered": len(delivered), "failed": failed, "undelivered": remaining})


def confluent_consume(bootstrap, topic, group, idle_seconds):
    from confluent_kafka import Consumer

    def on_assign(consumer, partitions):
        emit({"assigned": sorted(p.partition for p in partitions)})

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
        }
    )
    consumer.subscribe([topic], on_assign=on_assign)
    last = time.time()
    while time.time() - last < idle_seconds:
        message = consumer.poll(0.2)
        if message is None:
            continue
        if message.error():
            emit({"error": str(message.error())})
            continue
        consumer.commit(message=message, asynchronous=False)
        emit({"value": message.value().decode(), "partition": message.partition(), "offset": message.offset()})
        last = time.time()
    consumer.close()
    emit({"closed": True})


def kafka_python(bootstrap, topic, count):
    from kafka import KafkaConsumer, KafkaProducer

    # kafka-python's defaults: idempotence on (InitProducerId, sequences).
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    futures = [producer.send(topic, key=f"k{i}".encode(), value=f"v{i}".encode()) for i in range(count)]
    produced = sum(1 for future in futures if future.get(timeout=30) is not None)
    producer.close()
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id="kafka-python-group",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=5000,
    )
    values = []
    for message in consumer:
        values.append(message.value.decode())
        if len(values) == count:
            break
    consumer.commit()
    committed = sum(consumer.committed(tp) or 0 for tp in consumer.assignment())
    consumer.close()
    emit({"produced": produced, "consumed": len(values), "distinct": len(set(values)), "committed": committed})


def debug_features(bootstrap, topic):
    from confluent_kafka import Consumer, Producer

    conf = {"bootstrap.servers": bootstrap, "debug": "feature,protocol"}
    producer = Producer({**conf, "acks": "all"})
    producer.produce(topic, key="a", value="b")
    producer.flush(10)
    consumer = Consumer({**conf, "group.id": "debug-group", "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    got = None
    deadline = time.time() + 20
    while got is None and time.time() < deadline:
        message = consumer.poll(0.2)
        if message is not None and not message.error():
            got = message.value().decode()
            consumer.commit(message=message, asynchronous=False)
    consumer.close()
    emit({"got": got})


def confluent_compressed(bootstrap, topic, codec, count):
    from confluent_kafka import Consumer, Producer, TopicPartition

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "compression.type": codec,
            "linger.ms": 20,
            "enable.idempotence": True,
        }
    )
    delivered = []
    failed = []

    def report(error, message):
        if error is not None:
            failed.append(str(error))
        else:
            delivered.append(message.offset())

    for i in range(count):
        producer.produce(topic, value=f"{codec} value {i}, {codec} value {i}", partition=0, on_delivery=report)
        producer.poll(0)
    producer.flush(30)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"compressed-{codec}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    values = [message.value().decode() for message in poll_messages(consumer, count, 30)]
    consumer.close()
    emit({"delivered": len(delivered), "failed": failed, "values": values})


def confluent_admin(bootstrap, topic):
    from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
    from confluent_kafka.admin import (
        AdminClient,
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        NewTopic,
        ResourceType,
    )

    admin = AdminClient({"bootstrap.servers": bootstrap})
    report = {}
    configs = {"retention.ms": "3600000", "message.timestamp.type": "LogAppendTime"}
    created = admin.create_topics(
        [NewTopic(topic, 2, 1, config=configs), NewTopic(topic + "-bad", 1, 1, config={"cleanup.policy": "compact"})]
    )
    for name, future in created.items():
        try:
            future.result()
            report["created " + name] = "ok"
        except KafkaException as error:
            report["created " + name] = error.args[0].name()

    def describe():
        resource = ConfigResource(ResourceType.TOPIC, topic)
        found = admin.describe_configs([resource])[resource].result()
        return {name: [entry.value, entry.is_default] for name, entry in found.items()}

    report["described"] = describe()
    changes = [
        ConfigEntry("compression.type", "zstd", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE),
    ]
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=changes)
    admin.incremental_alter_configs([resource])[resource].result()
    report["altered"] = describe()
    bad = [ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.SET)]
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=bad)
    try:
        admin.incremental_alter_configs([resource])[resource].result()
        report["bad alter"] = "ok"
    except KafkaException as error:
        report["bad alter"] = error.args[0].name()

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    for i in range(10):
        producer.produce(topic, value=f"v{i}", partition=0, timestamp=1000)
    producer.flush(30)
    deleted = admin.delete_records([TopicPartition(topic, 0, 5)])
    report["low watermark"] = [future.result().low_watermark for future in deleted.values()]
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "admin-check", "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition(topic, 0, -2)])
    report["read"] = [
        [message.offset(), message.value().decode(), *message.timestamp()] for message in poll_messages(consumer, 5, 20)
    ]
    report["watermarks"] = list(consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10))
    consumer.close()
    report["now"] = int(time.time() * 1000)
    emit(report)


def confluent_ssl(bootstrap, topic, ca_file):
    from confluent_kafka import Consumer, Producer, TopicPartition

    tls = {"bootstrap.servers": bootstrap, "security.protocol": "SSL", "ssl.ca.location": ca_file}
    producer = Producer({**tls, "acks": "all"})
    delivered = []
    for i in range(100):
        producer.produce(topic, value=f"sealed {i}", partition=0, on_delivery=lambda e, m: e or delivered.append(1))
    producer.flush(30)
    consumer = Consumer({**tls, "group.id": "tls-check", "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition(topic, 0, -2)])
    values = [message.value().decode() for message in poll_messages(consumer, 100, 30)]
    consumer.close()
    emit({"delivered": len(delivered), "values": values})


def confluent_sasl(bootstrap, topic, ca_file, mechanism, user, password):
    from confluent_kafka import Consumer, Producer, TopicPartition

    errors = []
    config = {
        "bootstrap.servers": bootstrap,
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": ca_file,
        "sasl.mechanism": mechanism,
        "sasl.username": user,
        "sasl.password": password,
        "error_cb": lambda error: errors.append(error.str()),
    }
    producer = Producer({**config, "acks": "all", "message.timeout.ms": 10000})
    delivered = []
    for i in range(50):
        producer.produce(topic, value=f"signed {i}", partition=0, on_delivery=lambda e, m: e or delivered.append(1))
    producer.flush(15)
    values = []
    if delivered:
        consumer = Consumer({**config, "group.id": "sasl-check", "auto.offset.reset": "earliest"})
        consumer.assign([TopicPartition(topic, 0, -2)])
        values = [message.value().decode() for message in poll_messages(consumer, 50, 30)]
        consumer.close()
    emit({"delivered": len(delivered), "values": values, "errors": errors[:5]})


def confluent_acl(bootstrap, mechanism, user, password, topic, group):
    from confluent_kafka import Consumer, KafkaException, Producer

    config = {
        "bootstrap.servers": bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": mechanism,
        "sasl.username": user,
        "sasl.password": password,
    }
    producer = Producer({**config, "acks": "all", "message.timeout.ms": 8000})
    topics = sorted(producer.list_topics(timeout=10).topics.keys())
    delivered, produce_errors = [], []

    def report(error, message):
        if error:
            produce_errors.append(error.name())
        else:
            delivered.append(1)

    for i in range(10):
        producer.produce(topic, value=f"guarded {i}", partition=0, on_delivery=report)
    producer.flush(15)
    consume_errors = []
    consumer = Consumer({**config, "group.id": group, "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    consumed = 0
    deadline = time.time() + 12
    while consumed < 10 and time.time() < deadline:
        try:
            message = consumer.poll(0.5)
        except KafkaException as error:
            consume_errors.append(error.args[0].name())
            continue
        if message is None:
            continue
        if message.error():
            consume_errors.append(message.error().name())
        else:
            consumed += 1
    try:
        consumer.close()
    except KafkaException as error:
        consume_errors.append(error.args[0].name())
    emit({
        "topics": topics,
        "delivered": len(delivered),
        "produce_errors": sorted(set(produce_errors)),
        "consumed": consumed,
        "consume_errors": sorted(set(consume_errors)),
    })


def confluent_quota(bootstrap, mechanism, user, password, topic, total):
    from confluent_kafka import Producer

    throttled = [0]

    def on_throttle(event):
        throttled[0] = max(throttled[0], int(event.throttle_time * 1000))

    producer = Producer({
        "bootstrap.servers": bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": mechanism,
        "sasl.username": user,
        "sasl.password": password,
        "acks": "all",
        "linger.ms": 5,
        "throttle_cb": on_throttle,
    })
    delivered = []
    value = b"q" * 10240
    for _ in range(int(total) // len(value)):
        producer.produce(topic, value=value, partition=0, on_delivery=lambda e, m: e or delivered.append(1))
        producer.poll(0)
    producer.flush(60)
    emit({"delivered": len(delivered), "throttled_ms": throttled[0]})


def kafka_python_admin(bootstrap, topic):
    from kafka import KafkaAdminClient, TopicPartition
    from kafka.admin import ConfigResource, ConfigResourceType

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    report = {}
    altered = admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs={"retention.bytes": "10485760"})])
    report["altered"] = str(altered)
    keys = ["retention.bytes", "segment.bytes"]
    described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, keys)])
    report["described"] = described["topic"][topic] if isinstance(described, dict) else str(described)
    deleted = admin.delete_records({TopicPartition(topic, 0): -1})
    report["deleted"] = {str(tp.partition): result for tp, result in deleted.items()}
    admin.close()
    emit(report)


def main(argv):
    mode = argv[1]
    if mode == "confluent-produce":
        confluent_produce(argv[2], argv[3], int(argv[4]), int(argv[5]))
    elif mode == "confluent-consume":
        confluent_consume(argv[2], argv[3], argv[4], float(argv[5]))
    elif mode == "kafka-python":
        kafka_python(argv[2], argv[3], int(argv[4]))
    elif mode == "debug-features":
        debug_features(argv[2], argv[3])
    elif mode == "confluent-compressed":
        confluent_compressed(argv[2], argv[3], argv[4], int(argv[5]))
    elif mode == "confluent-admin":
        confluent_admin(argv[2], argv[3])
    elif mode == "confluent-quota":
        confluent_quota(*argv[2:8])
    elif mode == "confluent-acl":
        confluent_acl(*argv[2:8])
    elif mode == "confluent-sasl":
        confluent_sasl(*argv[2:8])
    elif mode == "confluent-ssl":
        confluent_ssl(argv[2], argv[3], argv[4])
    elif mode == "kafka-python-admin":
        kafka_python_admin(argv[2], argv[3])
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv)
