"""Demo data for `ofisync up --demo`.

Fills both applications with realistic Spanish travel-agency data: one agency ("Viajes
Alborada") with three branches mapped to three CRM agencies, six sellers mapped to six CRM
users, the CRM connection row, 300 OfiViaje clients (a third ticked "sync with the CRM"),
60 booking files with their tickets and PDF documents, and, in the CRM, 40 accounts and 20
files of its own with their segments.

Everything is deterministic for a given seed and day (no faker: names, streets and cities
come from the lists below). No link column is set: sharing records is the sync service's
job. Loading is idempotent: when OfiViaje already has branches, nothing is written.
"""

from __future__ import annotations

import random
import textwrap
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

__all__ = ["DemoData", "DemoSummary", "build_demo", "load_demo"]

_Cursor = psycopg.Cursor[tuple[Any, ...]]
_Row = tuple[Any, ...]


@dataclass(frozen=True)
class DemoSummary:
    """Row counts of the demo tables after `load_demo`; `loaded` says whether it wrote."""

    loaded: bool
    sucursales: int
    vendedores: int
    config_crm: int
    clientes: int
    clientes_sincronizar: int
    expedientes: int
    billetes: int
    documentos: int
    agencies: int
    users: int
    accounts: int
    files: int
    segments: int
    documents: int


# --------------------------------------------------------------------------- reference data


@dataclass(frozen=True)
class _Branch:
    nombre: str
    agency_id: str
    agency_name: str
    airport: str
    station: str
    city: str


@dataclass(frozen=True)
class _Seller:
    full_name: str
    username: str
    branch: int


@dataclass(frozen=True)
class _Dest:
    name: str
    airport: str | None
    station: str | None = None
    long_haul: bool = False


BRANCHES = (
    _Branch("Madrid (Gran Vía)", "AG-MAD", "Viajes Alborada Madrid", "MAD",
            "Madrid-Puerta de Atocha", "Madrid"),
    _Branch("Barcelona (Eixample)", "AG-BCN", "Viajes Alborada Barcelona", "BCN",
            "Barcelona-Sants", "Barcelona"),
    _Branch("Valencia (Russafa)", "AG-VLC", "Viajes Alborada València", "VLC",
            "València-Joaquín Sorolla", "Valencia"),
)  # fmt: skip

SELLERS = (
    _Seller("Lucía García Pérez", "lgarcia", 0),
    _Seller("Javier Martín Ruiz", "jmartin", 0),
    _Seller("Montserrat Puig Soler", "mpuig", 1),
    _Seller("Jordi Ferrer Vidal", "jferrer", 1),
    _Seller("Amparo Navarro Llorens", "anavarro", 2),
    _Seller("Vicente Ortega Muñoz", "vortega", 2),
)

CONFIG_CRM = ("agencia.demo", "demo-secret-change-me", "VAC", "A")  # usuario, clave, tipo, serie

_DESTINATIONS = (
    _Dest("Roma", "FCO"), _Dest("París", "ORY"), _Dest("Londres", "LGW"),
    _Dest("Lisboa", "LIS"), _Dest("Ámsterdam", "AMS"), _Dest("Praga", "PRG"),
    _Dest("Berlín", "BER"), _Dest("Atenas", "ATH"), _Dest("Estambul", "IST"),
    _Dest("Marrakech", "RAK"), _Dest("Dublín", "DUB"), _Dest("Oporto", "OPO"),
    _Dest("Nueva York", "JFK", long_haul=True), _Dest("Cancún", "CUN", long_haul=True),
    _Dest("Punta Cana", "PUJ", long_haul=True), _Dest("Buenos Aires", "EZE", long_haul=True),
    _Dest("Ciudad de México", "MEX", long_haul=True), _Dest("La Habana", "HAV", long_haul=True),
    _Dest("Tenerife", "TFN"), _Dest("Gran Canaria", "LPA"), _Dest("Palma de Mallorca", "PMI"),
    _Dest("Ibiza", "IBZ"), _Dest("Menorca", "MAH"), _Dest("Santiago de Compostela", "SCQ"),
    _Dest("Bilbao", "BIO"),
    _Dest("Sevilla", "SVQ", "Sevilla-Santa Justa"), _Dest("Málaga", "AGP", "Málaga-María Zambrano"),
    _Dest("Granada", None, "Granada"), _Dest("Córdoba", None, "Córdoba-Julio Anguita"),
    _Dest("Zaragoza", None, "Zaragoza-Delicias"), _Dest("Alicante", "ALC", "Alicante-Terminal"),
    _Dest("A Coruña", "LCG", "A Coruña"), _Dest("Madrid", "MAD", "Madrid-Puerta de Atocha"),
    _Dest("Barcelona", "BCN", "Barcelona-Sants"),
    _Dest("Valencia", "VLC", "València-Joaquín Sorolla"),
)  # fmt: skip

# (description template, tipo de expediente)
_TRIPS = (
    ("Escapada a {}", "VAC"), ("Vacaciones en {}", "VAC"), ("Viaje de novios a {}", "NOV"),
    ("Congreso médico en {}", "EMP"), ("Viaje de empresa a {}", "EMP"),
    ("Feria profesional en {}", "EMP"), ("Circuito cultural por {}", "VAC"),
    ("Viaje de grupo a {}", "GRP"), ("Puente en {}", "VAC"), ("Visita a clientes en {}", "EMP"),
)  # fmt: skip

_FEMALE = (
    "María", "Carmen", "Lucía", "Ana", "Isabel", "Laura", "Marta", "Elena", "Cristina", "Pilar",
    "Rocío", "Nuria", "Begoña", "Ainhoa", "Montserrat", "Inés", "Sofía", "Paula", "Raquel",
    "Ángela", "Noemí", "Verónica", "Mercedes", "Concepción", "Irene", "Alba", "Maite", "Núria",
    "Mª José", "Ana Belén",
)  # fmt: skip
_MALE = (
    "José", "Antonio", "Manuel", "Francisco", "Javier", "David", "Daniel", "Carlos", "Jesús",
    "Alejandro", "Miguel", "Rafael", "Pablo", "Sergio", "Álvaro", "Jorge", "Íñigo", "Andrés",
    "Óscar", "Rubén", "Adrián", "Joaquín", "Ramón", "Xavier", "Jordi", "Iker", "Juan Carlos",
    "José Luis", "Vicent",
)  # fmt: skip
_SURNAMES = (
    "García", "Rodríguez", "González", "Fernández", "López", "Martínez", "Sánchez", "Pérez",
    "Gómez", "Martín", "Jiménez", "Ruiz", "Hernández", "Díaz", "Moreno", "Muñoz", "Álvarez",
    "Romero", "Alonso", "Gutiérrez", "Navarro", "Torres", "Domínguez", "Vázquez", "Ramos", "Gil",
    "Ramírez", "Serrano", "Blanco", "Molina", "Morales", "Suárez", "Ortega", "Delgado", "Castro",
    "Ortiz", "Rubio", "Marín", "Sanz", "Núñez", "Iglesias", "Medina", "Garrido", "Cortés",
    "Castillo", "Santos", "Lozano", "Guerrero", "Cano", "Prieto", "Méndez", "Calvo", "Gallego",
    "Vidal", "León", "Márquez", "Herrera", "Peña", "Flores", "Cabrera", "Campos", "Vega",
    "Fuentes", "Carrasco", "Díez", "Caballero", "Reyes", "Nieto", "Pascual", "Herrero",
    "Lorenzo", "Montero", "Hidalgo", "Ibáñez", "Ferrer", "Durán", "Benítez", "Mora", "Vicente",
    "Arias", "Crespo", "Pastor", "Soto", "Sáez", "Velasco", "Soler", "Parra", "Esteban", "Bravo",
    "Etxeberria", "Puig", "Castaño", "Peñalver", "Ibarra", "Zubizarreta", "Muñiz", "Llorente",
    "de la Fuente", "del Río", "Oñate", "Sáenz de Urturi",
)  # fmt: skip
_STREET_TYPES = ("Calle", "Calle", "Calle", "Avenida", "Paseo", "Plaza", "Ronda", "Travesía")
_STREET_NAMES = (
    "Mayor", "de Alcalá", "del Príncipe de Vergara", "de Serrano", "de la Castellana", "de Goya",
    "de Bravo Murillo", "d'Aragó", "de Balmes", "de Muntaner", "de Blasco Ibáñez", "de Colón",
    "de Russafa", "de la Reina", "del Doctor Fleming", "de San Vicente Mártir", "de Andalucía",
    "de la Constitución", "de España", "de los Reyes Católicos", "de Cervantes",
    "de Federico García Lorca", "de Núñez de Balboa", "de la Paz", "Nueva", "del Sol",
    "de Sant Joan", "de Pi i Margall", "de Menéndez Pelayo", "de Isabel la Católica",
    "de Juan Carlos I", "de la Peña", "del Carmen", "de Cataluña", "de Santa María",
    "de Sagasta", "del Pintor Sorolla", "de la Estación", "de Miguel Hernández", "de Ausiàs March",
)  # fmt: skip
# (town, province, postal-code prefix, landline prefix, weight)
_TOWNS = (
    ("Madrid", "Madrid", "280", "91", 30), ("Alcalá de Henares", "Madrid", "288", "91", 3),
    ("Getafe", "Madrid", "289", "91", 2), ("Pozuelo de Alarcón", "Madrid", "282", "91", 2),
    ("Barcelona", "Barcelona", "080", "93", 22),
    ("L'Hospitalet de Llobregat", "Barcelona", "089", "93", 3),
    ("Sabadell", "Barcelona", "082", "93", 2), ("Girona", "Girona", "170", "972", 2),
    ("Valencia", "Valencia", "460", "96", 18), ("Torrent", "Valencia", "469", "96", 2),
    ("Gandia", "Valencia", "467", "96", 2), ("Alicante", "Alicante", "030", "965", 3),
    ("Castellón de la Plana", "Castellón", "120", "964", 2),
    ("Sevilla", "Sevilla", "410", "954", 3),
    ("Málaga", "Málaga", "290", "952", 3), ("Córdoba", "Córdoba", "140", "957", 1),
    ("Granada", "Granada", "180", "958", 1), ("Zaragoza", "Zaragoza", "500", "976", 2),
    ("Bilbao", "Bizkaia", "480", "94", 2), ("Donostia-San Sebastián", "Gipuzkoa", "200", "943", 1),
    ("Pamplona", "Navarra", "310", "948", 1), ("Logroño", "La Rioja", "260", "941", 1),
    ("A Coruña", "A Coruña", "150", "981", 1), ("Oviedo", "Asturias", "330", "985", 1),
    ("Gijón", "Asturias", "332", "985", 1), ("Santander", "Cantabria", "390", "942", 1),
    ("León", "León", "240", "987", 1), ("Valladolid", "Valladolid", "470", "983", 1),
    ("Salamanca", "Salamanca", "370", "923", 1), ("Palma", "Illes Balears", "070", "971", 2),
    ("Las Palmas de Gran Canaria", "Las Palmas", "350", "928", 1),
    ("Murcia", "Murcia", "300", "968", 2), ("Toledo", "Toledo", "450", "925", 1),
    ("Cáceres", "Cáceres", "100", "927", 1), ("Badajoz", "Badajoz", "060", "924", 1),
)  # fmt: skip
_COMPANY_KINDS = (
    "Talleres", "Construcciones", "Bodegas", "Transportes", "Asesoría", "Distribuciones",
    "Clínica Dental", "Laboratorios", "Ingeniería", "Consultoría", "Gráficas", "Inmobiliaria",
    "Muebles", "Aceites", "Conservas", "Colegio", "Farmacia", "Despacho de Abogados",
)  # fmt: skip
_COMPANY_PLACES = (
    "del Levante", "Cantábrica", "del Sur", "Mediterránea", "Castellana", "Ibérica", "Atlántica",
    "La Mancha", "del Ebro", "Montseny", "Guadalquivir", "Sierra Nevada", "Ría de Vigo",
    "Peñalara", "Albufera", "Empordà",
)  # fmt: skip
_COMPANY_FORMS = (("B", "S.L."), ("B", "S.L."), ("B", "S.L."), ("A", "S.A."), ("E", "C.B."))
_CONTACT_TITLES = (
    "Director general", "Responsable de viajes", "Office manager", "Administración",
    "Gerente", "Dirección financiera", "Secretaria de dirección", "Recursos humanos",
)  # fmt: skip
_MAIL_DOMAINS = ("gmail.com", "gmail.com", "hotmail.com", "yahoo.es", "outlook.es",
                 "telefonica.net", "icloud.com")  # fmt: skip
_CLIENT_NOTES = (
    "Prefiere asiento de ventanilla.",
    "Cliente VIP: atención preferente.",
    "Alérgico a los frutos secos; avisar a la aerolínea.",
    "Tarjeta Iberia Plus Oro.",
    "Factura a nombre de la empresa, pago a 30 días.",
    "No enviar publicidad (LOPD).",
    "Viaja con mascota (perro pequeño, en cabina).",
    "Solicita asiento de pasillo.",
    "Celíaco: pedir menú sin gluten.",
    "Viaja todos los años por Semana Santa.\nAvisar de ofertas a Canarias.",
    "Descuento de familia numerosa.",
    "Contactar preferentemente por WhatsApp.",
)
_CRM_NOTES = (
    "Llamar el martes para confirmar fechas.",
    "Pide presupuesto con hotel 4* en primera línea.",
    "Compara con otra agencia; ajustar precio.",
    "Quiere seguro de cancelación incluido.",
    "Viajan con dos niños (6 y 9 años).",
    "Interesados en ampliar con excursión de un día.",
    "Esperando aprobación de su empresa.",
    "Enviar propuesta por email antes del viernes.",
)
_LEAD_SOURCES = ("web", "teléfono", "recomendación", "FITUR", "email", "Instagram",
                 "cliente recurrente", "oficina")  # fmt: skip
_STAGES = ("lead", "qualified", "proposal", "negotiation", "won", "lost")
_STAGE_WEIGHTS = (5, 4, 5, 3, 2, 1)
_PRIORITIES = ("low", "normal", "high")
_DOC_TYPES = ("bono", "itinerario", "factura", "contrato", "seguro")
_CLAUSES = (
    "El presente documento forma parte del contrato de viaje combinado suscrito entre el "
    "cliente y la agencia, conforme al Real Decreto Legislativo 1/2007.",
    "Los horarios indicados son locales y pueden sufrir modificaciones por parte del "
    "transportista; se recomienda presentarse en el aeropuerto con dos horas de antelación.",
    "La documentación personal (DNI o pasaporte en vigor) es responsabilidad del viajero.",
    "Las cancelaciones realizadas con menos de quince días de antelación podrán conllevar "
    "gastos de gestión y penalizaciones de los proveedores.",
    "El equipaje facturado está sujeto a las condiciones de la compañía transportista.",
    "Teléfono de asistencia 24 horas: +34 900 123 456. Conserve este documento durante el viaje.",
    "Los precios incluyen tasas e impuestos vigentes a la fecha de emisión.",
    "Protección de datos: sus datos se tratan para la gestión del viaje contratado.",
)
_DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"
_PNR_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


# --------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class _Person:
    first: str
    surname1: str
    surname2: str
    female: bool

    @property
    def full(self) -> str:
        return f"{self.first} {self.surname1} {self.surname2}"

    @property
    def pnr(self) -> str:
        """Passenger name as a PNR prints it: 'GARCIA PEREZ/MARIA MRS'."""
        title = "MRS" if self.female else "MR"
        return (
            f"{_ascii(self.surname1)} {_ascii(self.surname2)}/{_ascii(self.first)} {title}".upper()
        )


@dataclass(frozen=True)
class _Client:
    person: _Person | None  # None: a company
    values: _Row  # nombre, nif, direccion, codigo_postal, poblacion, provincia, pais,
    #               contacto, cargo_contacto, telefono, movil, email, observaciones


@dataclass(frozen=True)
class _ErpFile:
    numero: str
    serie: str
    tipo: str
    cliente: int  # index into DemoData.clients
    vendedor: int  # index into SELLERS
    apertura: date
    descripcion: str
    destino: str
    salida: date
    regreso: date | None
    pasajeros: int
    importe: Decimal
    estado: str
    tickets: list[_Row]  # tipo, origen, destino, fecha_salida, transportista,
    #                     numero_servicio, pasajero, localizador, importe, origen_registro
    documents: list[tuple[str, str, bytes]]  # tipo, nombre_fichero, contenido


@dataclass(frozen=True)
class _CrmFile:
    values: _Row  # file_number, owner_username, agency_id, title, destination, departure_date,
    #               return_date, travellers, total_amount, status, stage, priority,
    #               next_follow_up, crm_notes, lead_source
    account: int  # index into DemoData.accounts
    segments: list[_Row]  # kind, origin, destination, departure_at, carrier,
    #                      service_number, passenger_name, fare


@dataclass(frozen=True)
class DemoData:
    """Everything `load_demo` writes, built without a database (rows reference by index)."""

    clients: list[_Client]
    sync_flags: list[bool]
    erp_files: list[_ErpFile]
    accounts: list[_Client]
    crm_files: list[_CrmFile]
    today: date


def _ascii(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def _slug(text: str) -> str:
    return "".join(c for c in _ascii(text).lower() if c.isalnum())


def _digits(rng: random.Random, n: int) -> str:
    return "".join(str(rng.randint(0, 9)) for _ in range(n))


def _dni(rng: random.Random) -> str:
    number = rng.randint(1_000_000, 79_999_999)
    return f"{number:08d}{_DNI_LETTERS[number % 23]}"


def _nie(rng: random.Random) -> str:
    prefix = rng.choice("XYZ")
    number = rng.randint(0, 9_999_999)
    letter = _DNI_LETTERS[int(f"{'XYZ'.index(prefix)}{number:07d}") % 23]
    return f"{prefix}{number:07d}{letter}"


def _cif(rng: random.Random, letter: str, province: str) -> str:
    body = province + _digits(rng, 5)
    total = 0
    for i, ch in enumerate(body):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            total += d // 10 + d % 10
        else:
            total += d
    return f"{letter}{body}{(10 - total % 10) % 10}"


def _landline(rng: random.Random, prefix: str) -> str:
    n = prefix + _digits(rng, 9 - len(prefix))
    if len(prefix) == 2:
        return f"+34 {n[:2]} {n[2:5]} {n[5:7]} {n[7:]}"
    return f"+34 {n[:3]} {n[3:5]} {n[5:7]} {n[7:]}"


def _mobile(rng: random.Random) -> str:
    n = "6" + _digits(rng, 8)
    return f"+34 {n[:3]} {n[3:6]} {n[6:]}"


def _person(rng: random.Random) -> _Person:
    female = rng.random() < 0.5
    first = rng.choice(_FEMALE if female else _MALE)
    s1, s2 = rng.sample(_SURNAMES, 2)
    return _Person(first, s1, s2, female)


def _address(rng: random.Random) -> tuple[str, str, str, str, str]:
    """(street, postal code, town, province, landline prefix)."""
    town, province, cp, phone, _ = rng.choices(_TOWNS, weights=[t[4] for t in _TOWNS])[0]
    street = f"{rng.choice(_STREET_TYPES)} {rng.choice(_STREET_NAMES)}, {rng.randint(1, 180)}"
    r = rng.random()
    if r < 0.55:
        street += f", {rng.randint(1, 9)}º {rng.choice('ABCDI')}"
    elif r < 0.65:
        street += ", bajo"
    elif r < 0.7:
        street += ", ático"
    return street, f"{cp}{rng.randint(1, 45):02d}", town, province, phone


def _client(rng: random.Random, used_tax_ids: set[str]) -> _Client:
    street, cp, town, province, phone = _address(rng)
    notes = rng.choice(_CLIENT_NOTES) if rng.random() < 0.25 else None
    if rng.random() < 0.75:
        p = _person(rng)
        r = rng.random()
        tax_id = _dni(rng) if r < 0.88 else _nie(rng) if r < 0.96 else None
        email = None
        if rng.random() < 0.85:
            suffix = str(rng.randint(1, 99)) if rng.random() < 0.4 else ""
            email = f"{_slug(p.first)}.{_slug(p.surname1)}{suffix}@{rng.choice(_MAIL_DOMAINS)}"
        values: _Row = (
            p.full, tax_id, street, cp, town, province,
            "España" if rng.random() < 0.95 else None, None, None,
            _landline(rng, phone) if rng.random() < 0.4 else None,
            _mobile(rng) if rng.random() < 0.92 else None, email, notes,
        )  # fmt: skip
        client = _Client(p, values)
    else:
        letter, form = rng.choice(_COMPANY_FORMS)
        core = (
            rng.choice(_COMPANY_PLACES)
            if rng.random() < 0.4
            else rng.choice(("Hermanos {}", "{} e Hijos", "{} y Asociados", "{}")).format(
                rng.choice(_SURNAMES)
            )
        )
        kind = rng.choice(_COMPANY_KINDS)
        contact = _person(rng)
        mailbox = rng.choice(("info", "administracion", "viajes", "reservas", ""))
        mailbox = mailbox or f"{_slug(contact.first)[0]}{_slug(contact.surname1)}"
        values = (
            f"{kind} {core}, {form}", _cif(rng, letter, cp[:2]), street, cp, town, province,
            "España", contact.full, rng.choice(_CONTACT_TITLES),
            _landline(rng, phone) if rng.random() < 0.95 else None,
            _mobile(rng) if rng.random() < 0.5 else None,
            f"{mailbox}@{_slug(core)[:20]}{_slug(kind)[:6]}.es", notes,
        )  # fmt: skip
        client = _Client(None, values)
    tax_id = client.values[1]
    if tax_id is not None and tax_id in used_tax_ids:
        return _client(rng, used_tax_ids)
    if tax_id is not None:
        used_tax_ids.add(tax_id)
    return client


def _at(rng: random.Random, day: date) -> datetime:
    return datetime.combine(day, time(rng.randint(6, 21), rng.randrange(0, 60, 5)))


def _itinerary(
    rng: random.Random,
    branch: _Branch,
    dest: _Dest,
    out: date,
    back: date | None,
    passengers: Sequence[str],
    count: int,
) -> list[_Row]:
    """Up to `count` tickets: outbound and return of the first passenger, then the next one.

    Rows: train?, origin, destination, departure, carrier, service number, passenger, fare.
    """
    train = dest.station is not None and (dest.airport is None or rng.random() < 0.6)
    if train:
        assert dest.station is not None
        ends = (branch.station, dest.station)
        carriers = [rng.choice(("RENFE AVE", "RENFE AVE", "IRYO", "OUIGO")) for _ in range(2)]
        services = [f"{rng.randint(2000, 9999):05d}" for _ in range(2)]
        fare = Decimal(rng.randint(2900, 11900)) / 100
    else:
        assert dest.airport is not None
        ends = (branch.airport, dest.airport)
        if dest.long_haul:
            carriers = [rng.choice(("IB", "UX"))] * 2
            services = [
                f"{c}{rng.randint(6001, 6899) if c == 'IB' else rng.randint(11, 99):03d}"
                for c in carriers
            ]
            fare = Decimal(rng.randint(42000, 135000)) / 100
        else:
            carriers = [rng.choice(("IB", "VY", "VY", "UX"))] * 2
            services = [f"{c}{rng.randint(1000, 8999)}" for c in carriers]
            fare = Decimal(rng.randint(4500, 26000)) / 100
    legs = [(ends[0], ends[1], _at(rng, out), carriers[0], services[0])]
    if back is not None:
        legs.append((ends[1], ends[0], _at(rng, back), carriers[1], services[1]))
    rows: list[_Row] = []
    for i in range(min(count, len(legs) * len(passengers))):
        origin, target, when, carrier, service = legs[i % len(legs)]
        pax = passengers[(i // len(legs)) % len(passengers)]
        rows.append((train, origin, target, when, carrier, service, pax, fare))
    return rows


def _pdf(rng: random.Random, header: Sequence[str], size: int) -> bytes:
    """A small, well-formed PDF of about `size` bytes: header lines, then general terms."""

    def esc(line: str) -> bytes:
        raw = line.encode("cp1252", errors="replace")
        return raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)")

    lines = [*header, ""]
    length = sum(len(x) + 16 for x in lines) + 900
    while length < size:
        clause = textwrap.wrap(rng.choice(_CLAUSES), 95)
        lines.extend(clause)
        length += sum(len(x) + 16 for x in clause)
    pages = [lines[i : i + 60] for i in range(0, len(lines), 60)]
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"",  # the page tree, filled in below
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    kids = []
    for page in pages:
        text = b"BT /F1 10 Tf 14 TL 56 800 Td\n" + b"".join(
            b"(" + esc(line) + b") Tj T*\n" for line in page
        ) + b"ET"  # fmt: skip
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(text), text))
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % len(objects)
        )
        kids.append(b"%d 0 R" % len(objects))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(kids), len(kids))
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def _erp_files(
    rng: random.Random, clients: list[_Client], flags: list[bool], today: date
) -> list[_ErpFile]:
    synced = [i for i, f in enumerate(flags) if f]
    others = [i for i, f in enumerate(flags) if not f]
    drafts = []
    for _ in range(60):
        apertura = today - timedelta(days=rng.randint(3, 150))
        drafts.append((apertura, rng.random()))
    drafts.sort()
    counters: dict[int, int] = {}
    files = []
    for apertura, _ in drafts:
        year = apertura.year
        counters[year] = counters.get(year, rng.randint(120, 480)) + rng.randint(1, 4)
        numero = f"{year}/{counters[year]:06d}"
        vendedor = rng.randrange(len(SELLERS))
        branch = BRANCHES[SELLERS[vendedor].branch]
        dest = rng.choice([d for d in _DESTINATIONS if d.name != branch.city])
        template, tipo = rng.choice(_TRIPS)
        cliente = rng.choice(synced if rng.random() < 2 / 3 else others)
        salida = apertura + timedelta(days=rng.randint(7, 180))
        regreso = None if rng.random() < 0.07 else salida + timedelta(days=rng.randint(2, 16))
        pasajeros = {"NOV": 2, "GRP": rng.randint(10, 30)}.get(tipo, rng.randint(1, 4))
        lead = clients[cliente].person or _person(rng)
        passengers = [lead] + [_person(rng) for _ in range(min(pasajeros, 2) - 1)]
        pnr = rng.random() < 0.6
        names = [p.pnr if pnr else p.full for p in passengers]
        localizador = "".join(rng.choice(_PNR_CHARS) for _ in range(6))
        tickets = [
            ("tren" if train else "avion", o, d, when, carrier, service, pax, localizador, fare,
             "pnr" if pnr else "manual")
            for train, o, d, when, carrier, service, pax, fare in _itinerary(
                rng, branch, dest, salida, regreso, names, rng.randint(1, 4)
            )
        ]  # fmt: skip
        legs = 2 if regreso else 1
        nights = (regreso - salida).days if regreso else 0
        importe = tickets[0][8] * legs * pasajeros + Decimal(
            nights * rng.randint(60, 220) * max(1, pasajeros // 2)
        )
        last = regreso or salida
        if last < today:
            estado = rng.choice(("facturado", "cerrado"))
        else:
            estado = rng.choices(("abierto", "confirmado", "anulado"), weights=(6, 6, 1))[0]
        descripcion = template.format(dest.name)
        documents = []
        for doc_tipo in rng.sample(_DOC_TYPES, rng.randint(1, 2)):
            nombre = f"{doc_tipo}_{numero.replace('/', '-')}.pdf"
            header = [
                f"Viajes Alborada - {branch.nombre}",
                f"{doc_tipo.upper()}  ·  Expediente {numero}",
                f"Documento: {nombre}",
                f"Cliente: {clients[cliente].values[0]}",
                f"{descripcion} ({pasajeros} pax)",
                f"Salida {salida:%d/%m/%Y}" + (f"  Regreso {regreso:%d/%m/%Y}" if regreso else ""),
                "",
            ] + [
                f"{t[5]:<8} {t[1]} - {t[2]}  {t[3]:%d/%m/%Y %H:%M}  {t[6]}  Loc. {t[7]}"
                for t in tickets
            ]
            documents.append((doc_tipo, nombre, _pdf(rng, header, rng.randint(2048, 60 * 1024))))
        files.append(
            _ErpFile(
                numero=numero,
                serie="A" if rng.random() < 0.9 else "B",
                tipo=tipo,
                cliente=cliente,
                vendedor=vendedor,
                apertura=apertura,
                descripcion=descripcion,
                destino=dest.name,
                salida=salida,
                regreso=regreso,
                pasajeros=pasajeros,
                importe=importe,
                estado=estado,
                tickets=tickets,
                documents=documents,
            )
        )
    return files


def _crm_files(rng: random.Random, today: date) -> list[_CrmFile]:
    files = []
    number = rng.randint(40, 90)
    for _ in range(20):
        number += rng.randint(1, 3)
        owner = rng.choice(SELLERS)
        branch = BRANCHES[owner.branch]
        dest = rng.choice([d for d in _DESTINATIONS if d.name != branch.city])
        template, tipo = rng.choice(_TRIPS)
        departure = today + timedelta(days=rng.randint(15, 200))
        back = departure + timedelta(days=rng.randint(3, 15))
        travellers = {"NOV": 2, "GRP": rng.randint(10, 30)}.get(tipo, rng.randint(1, 5))
        passengers = [_person(rng).full for _ in range(min(travellers, 2))]
        segments = [
            ("train" if train else "flight", o, d, when, carrier, service, pax, fare)
            for train, o, d, when, carrier, service, pax, fare in _itinerary(
                rng, branch, dest, departure, back, passengers, rng.randint(1, 3)
            )
        ]
        total = segments[0][7] * 2 * travellers + Decimal(
            (back - departure).days * rng.randint(70, 240)
        )
        stage = rng.choices(_STAGES, weights=_STAGE_WEIGHTS)[0]
        status = {"won": "confirmed", "lost": "cancelled"}.get(stage, "open")
        follow_up = None if stage in ("won", "lost") else today + timedelta(days=rng.randint(1, 21))
        values: _Row = (
            f"CRM-{today.year}-{number:04d}", owner.username, branch.agency_id,
            template.format(dest.name), dest.name, departure, back, travellers, total, status,
            stage, rng.choices(_PRIORITIES, weights=(2, 5, 2))[0], follow_up,
            rng.choice(_CRM_NOTES) if rng.random() < 0.7 else None, rng.choice(_LEAD_SOURCES),
        )  # fmt: skip
        files.append(_CrmFile(values, rng.randrange(40), segments))
    return files


def build_demo(seed: int = 7, today: date | None = None) -> DemoData:
    """Generate the demo data set; the same seed and day always give the same data."""
    day = today or date.today()
    rng = random.Random(seed)
    used: set[str] = set()
    clients = [_client(rng, used) for _ in range(300)]
    synced = set(rng.sample(range(300), 100))
    flags = [i in synced for i in range(300)]
    erp_files = _erp_files(rng, clients, flags, day)
    accounts = [_client(rng, used) for _ in range(40)]
    return DemoData(clients, flags, erp_files, accounts, _crm_files(rng, day), day)


# --------------------------------------------------------------------------- writing

_CLIENT_COLUMNS = (
    "nombre", "nif", "direccion", "codigo_postal", "poblacion", "provincia", "pais", "contacto",
    "cargo_contacto", "telefono", "movil", "email", "observaciones",
)  # fmt: skip
_ACCOUNT_COLUMNS = (
    "name", "tax_id", "street", "postal_code", "city", "region", "country", "contact_name",
    "contact_title", "phone", "mobile", "email", "notes",
)  # fmt: skip


def _columns(columns: Sequence[str]) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(c) for c in columns)


def _insert_ids(
    cur: _Cursor, table: str, columns: Sequence[str], rows: Sequence[_Row]
) -> list[int]:
    """Insert `rows` in one pipelined batch; the new ids, in row order."""
    query = sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING id").format(
        sql.Identifier(table),
        _columns(columns),
        sql.SQL(", ").join([sql.Placeholder()] * len(columns)),
    )
    cur.executemany(query, rows, returning=True)
    ids: list[int] = []
    while True:
        row = cur.fetchone()
        assert row is not None
        ids.append(int(row[0]))
        if not cur.nextset():
            return ids


def _copy(cur: _Cursor, table: str, columns: Sequence[str], rows: Sequence[_Row]) -> None:
    query = sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(table), _columns(columns))
    with cur.copy(query) as copy:
        for row in rows:
            copy.write_row(row)


def _write_crm(cur: _Cursor, demo: DemoData) -> None:
    _copy(cur, "agencies", ("id", "name"), [(b.agency_id, b.agency_name) for b in BRANCHES])
    _copy(
        cur,
        "users",
        ("username", "full_name", "agency_id"),
        [(s.username, s.full_name, BRANCHES[s.branch].agency_id) for s in SELLERS],
    )
    account_ids = _insert_ids(cur, "accounts", _ACCOUNT_COLUMNS, [a.values for a in demo.accounts])
    file_ids = _insert_ids(
        cur,
        "files",
        ("account_id", "file_number", "owner_username", "agency_id", "title", "destination",
         "departure_date", "return_date", "travellers", "total_amount", "status", "stage",
         "priority", "next_follow_up", "crm_notes", "lead_source"),
        [(account_ids[f.account], *f.values) for f in demo.crm_files],
    )  # fmt: skip
    _copy(
        cur,
        "segments",
        ("file_id", "kind", "origin", "destination", "departure_at", "carrier", "service_number",
         "passenger_name", "fare"),
        [(fid, *s) for fid, f in zip(file_ids, demo.crm_files, strict=True) for s in f.segments],
    )  # fmt: skip


def _write_erp(cur: _Cursor, demo: DemoData) -> None:
    sucursal_ids = _insert_ids(
        cur, "sucursales", ("nombre", "crm_agencia_id"), [(b.nombre, b.agency_id) for b in BRANCHES]
    )
    vendedor_ids = _insert_ids(
        cur, "vendedores", ("nombre", "crm_usuario"), [(s.full_name, s.username) for s in SELLERS]
    )
    usuario, clave, tipo, serie = CONFIG_CRM
    cur.execute(
        "INSERT INTO config_crm (id, usuario, clave, sucursal_id, vendedor_id, tipo_expediente,"
        " serie) VALUES (true, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
        (usuario, clave, sucursal_ids[0], vendedor_ids[0], tipo, serie),
    )
    cliente_ids = _insert_ids(
        cur,
        "clientes",
        (*_CLIENT_COLUMNS, "sincronizar_crm"),
        [(*c.values, f) for c, f in zip(demo.clients, demo.sync_flags, strict=True)],
    )
    files = demo.erp_files
    expediente_ids = _insert_ids(
        cur,
        "expedientes",
        ("numero", "serie", "tipo", "cliente_id", "vendedor_id", "sucursal_id", "fecha_apertura",
         "descripcion", "destino", "fecha_salida", "fecha_regreso", "pasajeros", "importe_total",
         "estado"),
        [(f.numero, f.serie, f.tipo, cliente_ids[f.cliente], vendedor_ids[f.vendedor],
          sucursal_ids[SELLERS[f.vendedor].branch], f.apertura, f.descripcion, f.destino,
          f.salida, f.regreso, f.pasajeros, f.importe, f.estado) for f in files],
    )  # fmt: skip
    _copy(
        cur,
        "billetes",
        ("expediente_id", "tipo", "origen", "destino", "fecha_salida", "transportista",
         "numero_servicio", "pasajero", "localizador", "importe", "origen_registro"),
        [(eid, *t) for eid, f in zip(expediente_ids, files, strict=True) for t in f.tickets],
    )  # fmt: skip
    _copy(
        cur,
        "documentos",
        ("expediente_id", "tipo", "nombre_fichero", "mime", "contenido", "estado_sync"),
        # Every bono (voucher) is marked for the CRM, so the demo shows uploads (G → O).
        [(eid, t, name, "application/pdf", content, "G" if t == "bono" else "P")
         for eid, f in zip(expediente_ids, files, strict=True) for t, name, content in f.documents],
    )  # fmt: skip


def _count(cur: _Cursor, table: str, where: str = "") -> int:
    query = sql.SQL("SELECT count(*) FROM {} {}").format(sql.Identifier(table), sql.SQL(where))
    row = cur.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def _summary(
    erp: psycopg.Connection[Any], crm: psycopg.Connection[Any], loaded: bool
) -> DemoSummary:
    with erp.transaction(), erp.cursor(row_factory=tuple_row) as e:
        erp_counts = {
            t: _count(e, t)
            for t in ("sucursales", "vendedores", "config_crm", "clientes", "expedientes",
                      "billetes", "documentos")
        }  # fmt: skip
        erp_counts["clientes_sincronizar"] = _count(e, "clientes", "WHERE sincronizar_crm")
    with crm.transaction(), crm.cursor(row_factory=tuple_row) as c:
        crm_counts = {
            t: _count(c, t)
            for t in ("agencies", "users", "accounts", "files", "segments", "documents")
        }
    return DemoSummary(loaded=loaded, **erp_counts, **crm_counts)


def _commit(conn: psycopg.Connection[Any]) -> None:
    if not conn.autocommit:
        conn.commit()


def load_demo(
    erp: psycopg.Connection[Any],
    crm: psycopg.Connection[Any],
    *,
    seed: int = 7,
    today: date | None = None,
) -> DemoSummary:
    """Load the demo data into both databases, unless OfiViaje already has branches.

    The CRM part is committed first and skipped when the CRM already has agencies, so a run
    interrupted between the two commits completes on the next call. Both guard tables are
    locked while checking, so two concurrent calls cannot both load.
    """
    with erp.transaction(), erp.cursor(row_factory=tuple_row) as e:
        e.execute("LOCK TABLE sucursales IN SHARE ROW EXCLUSIVE MODE")
        loaded = _count(e, "sucursales") == 0
        if loaded:
            demo = build_demo(seed, today)
            with crm.transaction(), crm.cursor(row_factory=tuple_row) as c:
                c.execute("LOCK TABLE agencies IN SHARE ROW EXCLUSIVE MODE")
                if _count(c, "agencies") == 0:
                    _write_crm(c, demo)
            _commit(crm)
            _write_erp(e, demo)
    _commit(erp)
    return _summary(erp, crm, loaded)
