{{/* Names, labels and the pieces every workload shares. */}}

{{- define "shoal.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "shoal.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "origin"). */}}
{{- define "shoal.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "shoal.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "shoal.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "shoal.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/* The pod-level fields every workload shares: (dict "root" $ "values" .Values.<component>). */}}
{{- define "shoal.podSpec" -}}
serviceAccountName: {{ include "shoal.serviceAccountName" .root }}
automountServiceAccountToken: {{ .root.Values.serviceAccount.automountServiceAccountToken }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* A container's securityContext; `root` for the init and node-setup containers, which need
     uid 0 (chown, the node's containerd files) but nothing else. (dict "root" $ "asRoot" true) */}}
{{- define "shoal.containerSecurity" -}}
{{- $context := deepCopy .root.Values.securityContext -}}
{{- if .asRoot -}}
{{- $_ := set $context "runAsUser" 0 -}}
{{- $_ := set $context "runAsGroup" 0 -}}
{{- $_ := set $context "runAsNonRoot" false -}}
{{- with .capabilities -}}
{{- $_ := set $context "capabilities" (dict "drop" (list "ALL") "add" .) -}}
{{- end -}}
{{- end -}}
securityContext:
  {{- toYaml $context | nindent 2 }}
{{- end -}}

{{/* Replaces __POD_IP__, __NODE_IP__, __NODE_NAME__ and __PREHEAT_SECRET__ (a single-quoted YAML
     scalar) in every file of /etc/shoal-template, written to /etc/shoal (a config file has no
     variables). Literal replacement: no character of a value is special. */}}
{{- define "shoal.renderConfigScript" -}}
for template in /etc/shoal-template/*.template; do
  awk 'function swap(s, key, value,   i, out) {
         out = "";
         while ((i = index(s, key)) > 0) { out = out substr(s, 1, i - 1) value; s = substr(s, i + length(key)) }
         return out s
       }
       BEGIN { secret = ENVIRON["PREHEAT_SECRET"]; sub(/\n+$/, "", secret); gsub(/\047/, "\047\047", secret) }
       { line = swap($0, "__POD_IP__", ENVIRON["POD_IP"]); line = swap(line, "__NODE_IP__", ENVIRON["NODE_IP"]);
         line = swap(line, "__NODE_NAME__", ENVIRON["NODE_NAME"]); print swap(line, "__PREHEAT_SECRET__", "\047" secret "\047") }' \
    "$template" > "/etc/shoal/$(basename "$template" .template)"
done
{{- end -}}

{{/* The init container that renders a component's config templates into the `config` volume.
     (dict "root" $) */}}
{{- define "shoal.renderConfigInit" -}}
- name: render-config
  image: {{ include "shoal.image" .root }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  command: [sh, -c, {{ include "shoal.renderConfigScript" . | quote }}]
  env:
    - name: POD_IP
      valueFrom:
        fieldRef: {fieldPath: status.podIP}
    - name: NODE_IP
      valueFrom:
        fieldRef: {fieldPath: status.hostIP}
    - name: NODE_NAME
      valueFrom:
        fieldRef: {fieldPath: spec.nodeName}
    {{- with .root.Values.proxy.preheat.existingSecret }}
    - name: PREHEAT_SECRET
      valueFrom:
        secretKeyRef: {name: {{ . }}, key: {{ $.root.Values.proxy.preheat.existingSecretKey }}}
    {{- end }}
  {{- include "shoal.containerSecurity" (dict "root" .root) | nindent 2 }}
  resources:
    requests: {cpu: 10m, memory: 16Mi}
    limits: {memory: 32Mi}
  volumeMounts:
    - {name: config-template, mountPath: /etc/shoal-template, readOnly: true}
    - {name: config, mountPath: /etc/shoal}
{{- end -}}

{{/* The preheat secret as the config gets it: the placeholder the init container fills in from
     `existingSecret`, else the value. */}}
{{- define "shoal.preheatSecret" -}}
{{- if .Values.proxy.preheat.existingSecret -}}
__PREHEAT_SECRET__
{{- else -}}
{{- .Values.proxy.preheat.secret -}}
{{- end -}}
{{- end -}}

{{/* The origins' headless Service, which gives every StatefulSet pod a stable DNS name. */}}
{{- define "shoal.originHeadless" -}}
{{ include "shoal.fullname" . }}-origins
{{- end -}}

{{/* The headless Service over the agent DaemonSet that the proxy preheats into; rendered only
     when preheating into agents is on. */}}
{{- define "shoal.agentHeadless" -}}
{{ include "shoal.fullname" . }}-agents
{{- end -}}

{{- define "shoal.preheatAgents" -}}
{{- $agents := .Values.proxy.preheat.agents -}}
{{- if or (gt (int $agents.count) 0) (gt (float64 $agents.share) 0.0) -}}true{{- end -}}
{{- end -}}

{{/* The origins' host names, one per replica: "<pod>.<headless service>", which every pod of
     the namespace resolves through its DNS search path. Kept short on purpose: the tracker uses
     an origin's peer address as its peer id, which is at most 64 characters. */}}
{{- define "shoal.originHosts" -}}
{{- $root := . -}}
{{- $hosts := list -}}
{{- range $i := until (int .Values.origin.replicas) -}}
{{- $host := printf "%s-origin-%d.%s" (include "shoal.fullname" $root) $i (include "shoal.originHeadless" $root) -}}
{{- if gt (len (printf "%s:15101" $host)) 64 -}}
{{- fail (printf "origin address %s:15101 is longer than a peer id may be (64): set fullnameOverride to a shorter name" $host) -}}
{{- end -}}
{{- $hosts = append $hosts $host -}}
{{- end -}}
{{- toJson $hosts -}}
{{- end -}}

{{/* How internal HTTP addresses are written: "https://" with mutual TLS, else bare host:port. */}}
{{- define "shoal.httpScheme" -}}
{{- if .Values.mtls.enabled -}}https://{{- end -}}
{{- end -}}

{{/* `origins:` of proxy and build-index, wrapped as {"origins": …} JSON: the static list, or DNS
     over the headless Service. */}}
{{- define "shoal.originMembers" -}}
{{- if eq .Values.membership.mode "dns" -}}
{{- $dns := dict "name" (printf "%s.%s.svc.%s" (include "shoal.originHeadless" .) .Release.Namespace .Values.clusterDomain) "port" 15100 "interval" .Values.membership.dnsInterval -}}
{{- if .Values.mtls.enabled -}}
{{- $_ := set $dns "scheme" "https" -}}
{{- end -}}
{{- dict "origins" (dict "dns" $dns) | toJson -}}
{{- else if eq .Values.membership.mode "static" -}}
{{- $list := list -}}
{{- range (include "shoal.originHosts" . | fromJsonArray) -}}
{{- $list = append $list (printf "%s%s:15100" (include "shoal.httpScheme" $) .) -}}
{{- end -}}
{{- dict "origins" $list | toJson -}}
{{- else -}}
{{- fail (printf "membership.mode must be static or dns, not %q" .Values.membership.mode) -}}
{{- end -}}
{{- end -}}

{{/* Pod annotations: Prometheus scraping on the component's HTTP port (over HTTPS when "https"),
     and a config checksum so that a changed ConfigMap rolls the pods.
     (dict "root" $ "port" 15100 "config" "<text>" "https" true) */}}
{{- define "shoal.podAnnotations" -}}
{{- if .root.Values.metrics.scrapeAnnotations -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- if .https }}
prometheus.io/scheme: https
{{- end }}
{{ end -}}
checksum/config: {{ .config | sha256sum }}
{{- end -}}

{{/* Environment every Shoal container gets, then the component's own `env` and `envFrom`, and
     the backends' credentials where `backend` is set. (dict "root" $ "values" .Values.origin
     "backend" true) */}}
{{- define "shoal.env" -}}
env:
  - name: RUST_LOG
    value: {{ .root.Values.rustLog | quote }}
  {{- if .root.Values.tls.caSecret.enabled }}
  - name: SSL_CERT_FILE
    value: /etc/shoal/ca/{{ .root.Values.tls.caSecret.key }}
  {{- end }}
  {{- with .values.env }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- $envFrom := .values.envFrom | default list -}}
{{- if and .backend .root.Values.backendCredentials.existingSecret -}}
{{- $envFrom = prepend $envFrom (dict "secretRef" (dict "name" .root.Values.backendCredentials.existingSecret)) -}}
{{- end -}}
{{- with $envFrom }}
envFrom:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The CA bundle's volume and mount, when tls.caSecret.enabled. */}}
{{- define "shoal.tlsVolumeMounts" -}}
- name: ca
  mountPath: /etc/shoal/ca
  readOnly: true
{{- end -}}

{{- define "shoal.tlsVolumes" -}}
- name: ca
  secret:
    secretName: {{ .Values.tls.caSecret.name }}
    items:
      - key: {{ .Values.tls.caSecret.key }}
        path: {{ .Values.tls.caSecret.key }}
{{- end -}}

{{/* Startup and liveness on GET /livez of the named container port (the process serves: a
     failure restarts it); readiness on GET /readyz, which fails while what the component
     depends on does not answer (its store, backend, tracker, build-index or origins: the pod
     leaves the Services, the process is not restarted). The startup probe gives a slow start (a
     big cache or store to scan) five minutes before liveness counts. */}}
{{- define "shoal.probes" -}}
{{- $port := . -}}
{{- $scheme := "HTTP" -}}
{{- if kindIs "map" . -}}
{{- $port = .port -}}
{{- $scheme = .scheme | default "HTTP" -}}
{{- end -}}
startupProbe:
  httpGet: {path: /livez, port: {{ $port }}, scheme: {{ $scheme }}}
  periodSeconds: 2
  timeoutSeconds: 3
  failureThreshold: 150
livenessProbe:
  httpGet: {path: /livez, port: {{ $port }}, scheme: {{ $scheme }}}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 6
readinessProbe:
  httpGet: {path: /readyz, port: {{ $port }}, scheme: {{ $scheme }}}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
{{- end -}}

{{/* The agent's registry endpoint as the node's container runtime reaches it (NODE_IP: an
     environment variable of the container, expanded by the kubelet). */}}
{{- define "shoal.agentEndpoint" -}}
{{- if .Values.agent.hostNetwork -}}
http://127.0.0.1:{{ .Values.agent.registryPort }}
{{- else -}}
http://$(NODE_IP):{{ .Values.agent.hostPort }}
{{- end -}}
{{- end -}}

{{/* Volumes every workload has: the config, and /tmp (the root filesystem is read-only). */}}
{{- define "shoal.tmpVolume" -}}
- name: tmp
  emptyDir: {sizeLimit: 64Mi}
{{- end -}}


{{/* Mutual TLS. Components by their values key; the role is what their certificate names. */}}
{{- define "shoal.mtlsComponents" -}}
{{- toJson (dict "origin" "origin" "buildIndex" "build-index" "tracker" "tracker" "proxy" "proxy" "agent" "agent") -}}
{{- end -}}

{{/* The Secret holding a component's certificate: (dict "root" $ "component" "buildIndex"). */}}
{{- define "shoal.mtlsSecret" -}}
{{- $role := get (include "shoal.mtlsComponents" .root | fromJson) .component -}}
{{- get .root.Values.mtls.existingSecrets .component | default (printf "%s-%s-mtls" (include "shoal.fullname" .root) $role) -}}
{{- end -}}

{{/* What mutual TLS needs from the values; called by every template that renders it. */}}
{{- define "shoal.mtlsValidate" -}}
{{- if .Values.mtls.enabled -}}
{{- if .Values.proxy.tls.enabled -}}
{{- fail "mtls.enabled and proxy.tls.enabled: with mutual TLS the proxy serves its mTLS certificate on its public port too (one tls section); turn proxy.tls off and put the proxy's public names in mtls.certManager.proxyDnsNames, or bring that certificate as mtls.existingSecrets.proxy" -}}
{{- end -}}
{{- range $component, $role := include "shoal.mtlsComponents" . | fromJson -}}
{{- if and (not (get $.Values.mtls.existingSecrets $component)) (not $.Values.mtls.certManager.issuerRef.name) -}}
{{- fail (printf "mtls.enabled: set mtls.existingSecrets.%s or mtls.certManager.issuerRef.name" $component) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A component's `tls:` section with mutual TLS, as JSON: the Secret's files where
     shoal.mtlsVolumeMounts puts them. */}}
{{- define "shoal.mtlsConfig" -}}
{{- $tls := dict "cert" "/etc/shoal/mtls/tls.crt" "key" "/etc/shoal/mtls/tls.key" "ca" "/etc/shoal/mtls/ca.crt" -}}
{{- with .Values.mtls.identities -}}
{{- $_ := set $tls "identities" . -}}
{{- end -}}
{{- toJson $tls -}}
{{- end -}}

{{/* The certificate's volume and mount, when mtls.enabled. The whole Secret is mounted (no
     items, no subPath), so the kubelet updates the files on renewal and the component reloads
     them. (dict "root" $ "component" "origin") */}}
{{- define "shoal.mtlsVolumeMounts" -}}
- {name: mtls, mountPath: /etc/shoal/mtls, readOnly: true}
{{- end -}}

{{- define "shoal.mtlsVolumes" -}}
- name: mtls
  secret:
    secretName: {{ include "shoal.mtlsSecret" . }}
{{- end -}}
