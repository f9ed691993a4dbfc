{{/* The generated registry facts (files/components.yaml) and the routes in force. */}}
{{- define "lanes.components" -}}
{{- .Files.Get "files/components.yaml" -}}
{{- end -}}

{{- define "lanes.routesText" -}}
{{- if .Values.routes -}}{{- .Values.routes -}}{{- else -}}{{- .Files.Get "files/default-routes.yaml" -}}{{- end -}}
{{- end -}}

{{- define "lanes.required" -}}
{{- $v := .Values -}}
{{- if not $v.kafka.bootstrap -}}{{- fail "kafka.bootstrap is required: the Kafka bootstrap list, host:port[,host:port...]" -}}{{- end -}}
{{- if not $v.objectStore.artifacts -}}{{- fail "objectStore.artifacts is required: s3://bucket/prefix, where every image goes" -}}{{- end -}}
{{- if not $v.gateway.publicUrl -}}{{- fail "gateway.publicUrl is required: the URL clients reach the gateway at (image URLs are under it)" -}}{{- end -}}
{{- end -}}

{{- define "lanes.image" -}}
{{- $root := index . 0 -}}{{- $kind := index . 1 -}}
{{- $name := ternary $root.Values.image.gpu $root.Values.image.cpu (eq $kind "gpu") -}}
{{- printf "%s/%s:%s" $root.Values.image.registry $name (default $root.Chart.AppVersion $root.Values.image.tag) -}}
{{- end -}}

{{- define "lanes.labels" -}}
app.kubernetes.io/name: lanes
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The most members a component's group can use: the fewest partitions among the
     topics it shares out (files/components.yaml maxReplicasBy). */}}
{{- define "lanes.maxReplicas" -}}
{{- $p := (index . 0).Values.kafka.partitions -}}
{{- $min := 1000000 -}}
{{- range (index . 1) -}}
{{- $n := 0 -}}
{{- if eq (toString .) "topics" -}}{{- $n = int $p.topics -}}
{{- else if eq (toString .) "lanes" -}}{{- $n = int $p.lanes -}}{{- range $l, $c := $p.byLane -}}{{- if lt (int $c) $n -}}{{- $n = int $c -}}{{- end -}}{{- end -}}
{{- else -}}{{- $n = int . -}}{{- end -}}
{{- if lt $n $min -}}{{- $min = $n -}}{{- end -}}
{{- end -}}
{{- $min -}}
{{- end -}}

{{/* Every pod's settings: the cluster, the object store, the secrets, by reference. */}}
{{- define "lanes.env" -}}
{{- $root := index . 0 -}}{{- $c := index . 1 -}}{{- $v := $root.Values -}}
- {name: LANES_PROFILE, value: production}
- {name: LANES_KAFKA_BOOTSTRAP, value: {{ $v.kafka.bootstrap | quote }}}
- {name: LANES_KAFKA_SECURITY_PROTOCOL, value: {{ $v.kafka.securityProtocol | quote }}}
- {name: LANES_KAFKA_SASL_MECHANISM, value: {{ $v.kafka.saslMechanism | quote }}}
- {name: LANES_KAFKA_ALLOW_PLAINTEXT, value: {{ $v.kafka.allowPlaintext | quote }}}
{{- if $v.kafka.caSecret }}
- {name: LANES_KAFKA_CA_FILE, value: /etc/lanes/kafka-ca/ca.crt}
{{- end }}
{{- if hasPrefix "SASL" $v.kafka.securityProtocol }}
- name: LANES_KAFKA_USERNAME
  valueFrom: {secretKeyRef: {name: {{ printf "%s%s" $v.kafka.credentialsSecretPrefix $c.principal | quote }}, key: username}}
- name: LANES_KAFKA_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ printf "%s%s" $v.kafka.credentialsSecretPrefix $c.principal | quote }}, key: password}}
{{- end }}
- {name: LANES_TOPIC_REPLICATION_FACTOR, value: {{ $v.kafka.replicationFactor | quote }}}
- {name: LANES_TOPIC_MIN_INSYNC_REPLICAS, value: {{ $v.kafka.minInsyncReplicas | quote }}}
- {name: LANES_TOPIC_PARTITIONS, value: {{ $v.kafka.partitions.topics | quote }}}
- {name: LANES_LANE_PARTITIONS, value: {{ $v.kafka.partitions.lanes | quote }}}
- {name: LANES_LANE_PARTITIONS_BY_LANE, value: {{ $v.kafka.partitions.byLane | toJson | quote }}}
- {name: LANES_ROUTES_FILE, value: /etc/lanes/routes/routes.yaml}
- {name: LANES_METRICS_HOST, value: 0.0.0.0}
- {name: LANES_METRICS_PORT, value: "9100"}
- {name: LANES_STATE_DIR, value: /var/lib/lanes}
- {name: LANES_PUBLIC_URL, value: {{ $v.gateway.publicUrl | quote }}}
- name: LANES_INSTANCE_ID
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- {name: LANES_ARTIFACTS, value: {{ $v.objectStore.artifacts | quote }}}
{{- if $v.objectStore.endpointUrl }}
- {name: LANES_S3_ENDPOINT_URL, value: {{ $v.objectStore.endpointUrl | quote }}}
{{- end }}
{{- if $v.objectStore.region }}
- {name: LANES_S3_REGION, value: {{ $v.objectStore.region | quote }}}
{{- end }}
{{- if $v.objectStore.credentialsSecret }}
- name: LANES_S3_ACCESS_KEY_ID
  valueFrom: {secretKeyRef: {name: {{ $v.objectStore.credentialsSecret | quote }}, key: access-key-id, optional: true}}
- name: LANES_S3_SECRET_ACCESS_KEY
  valueFrom: {secretKeyRef: {name: {{ $v.objectStore.credentialsSecret | quote }}, key: secret-access-key, optional: true}}
{{- end }}
- name: LANES_WEBHOOK_SECRET
  valueFrom: {secretKeyRef: {name: {{ $v.secrets.app | quote }}, key: webhook-secret}}
- name: LANES_OPS_KEY
  valueFrom: {secretKeyRef: {name: {{ $v.secrets.app | quote }}, key: ops-key}}
- name: LANES_ARTIFACT_URL_KEY
  valueFrom: {secretKeyRef: {name: {{ $v.secrets.app | quote }}, key: artifact-url-key}}
- name: LANES_CONTROL_VERIFY_KEYS
  valueFrom: {secretKeyRef: {name: {{ $v.secrets.control | quote }}, key: verify-keys}}
{{- if $c.signsControl }}
- name: LANES_CONTROL_SIGNING_KEY
  valueFrom: {secretKeyRef: {name: {{ $v.secrets.control | quote }}, key: signing-key}}
{{- end }}
{{- range $c.providerKeys }}
- name: {{ . }}
  valueFrom: {secretKeyRef: {name: {{ $v.secrets.providerKeys | quote }}, key: {{ . }}, optional: true}}
{{- end }}
{{- range $k, $val := $c.env }}
- {name: {{ $k }}, value: {{ $val | quote }}}
{{- end }}
{{- end -}}

{{/* One component's Deployment. $c: name, principal, args, replicas, resources, image
     (cpu|gpu), port, signsControl, models, grace, nodeSelector, tolerations, affinity,
     env, providerKeys. */}}
{{- define "lanes.deployment" -}}
{{- $root := index . 0 -}}{{- $c := index . 1 -}}{{- $v := $root.Values -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: lanes-{{ $c.name }}
  labels:
    {{- include "lanes.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $c.name }}
spec:
  replicas: {{ $c.replicas }}
  # One pod at a time: the lane never stops serving during a rolling restart.
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxUnavailable: 0, maxSurge: 1}
  selector:
    matchLabels:
      app.kubernetes.io/instance: {{ $root.Release.Name }}
      app.kubernetes.io/component: {{ $c.name }}
  template:
    metadata:
      labels:
        {{- include "lanes.labels" $root | nindent 8 }}
        app.kubernetes.io/component: {{ $c.name }}
      annotations:
        prometheus.io/scrape: "true"
        prometheus.io/port: {{ $c.port | quote }}
        checksum/routes: {{ include "lanes.routesText" $root | sha256sum }}
    spec:
      terminationGracePeriodSeconds: {{ $c.grace }}
      {{- with $v.imagePullSecrets }}
      imagePullSecrets: {{ toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        runAsNonRoot: true
        runAsUser: 10001
        runAsGroup: 10001
        fsGroup: 10001
        seccompProfile: {type: RuntimeDefault}
      containers:
        - name: {{ $c.name }}
          image: {{ include "lanes.image" (list $root $c.image) | quote }}
          imagePullPolicy: {{ $v.image.pullPolicy }}
          args: {{ toJson $c.args }}
          env:
            {{- include "lanes.env" (list $root $c) | nindent 12 }}
          ports:
            - {name: http, containerPort: {{ $c.port }}}
          readinessProbe:
            httpGet: {path: /readyz, port: http}
            periodSeconds: 5
          livenessProbe:
            httpGet: {path: /healthz, port: http}
            periodSeconds: 10
            failureThreshold: 6
          resources: {{ toYaml $c.resources | nindent 12 }}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {drop: [ALL]}
          volumeMounts:
            - {name: routes, mountPath: /etc/lanes/routes, readOnly: true}
            - {name: state, mountPath: /var/lib/lanes}
            - {name: tmp, mountPath: /tmp}
            {{- if $v.kafka.caSecret }}
            - {name: kafka-ca, mountPath: /etc/lanes/kafka-ca, readOnly: true}
            {{- end }}
            {{- if $c.models }}
            - {name: models, mountPath: /models, readOnly: true}
            {{- end }}
      volumes:
        - name: routes
          configMap: {name: lanes-routes}
        # The process's own views, rebuilt from Kafka: a rescheduled pod only catches up.
        - name: state
          emptyDir: {sizeLimit: 20Gi}
        - name: tmp
          emptyDir: {sizeLimit: 1Gi}
        {{- if $v.kafka.caSecret }}
        - name: kafka-ca
          secret: {secretName: {{ $v.kafka.caSecret | quote }}}
        {{- end }}
        {{- if $c.models }}
        - name: models
          persistentVolumeClaim: {claimName: {{ $v.models.claimName | quote }}, readOnly: true}
        {{- end }}
      {{- with $c.nodeSelector }}
      nodeSelector: {{ toYaml . | nindent 8 }}
      {{- end }}
      {{- with $c.tolerations }}
      tolerations: {{ toYaml . | nindent 8 }}
      {{- end }}
      {{- with $c.affinity }}
      affinity: {{ toYaml . | nindent 8 }}
      {{- end }}
{{- end -}}
